"""Job LoRAs: LoRAs a job names by source, fetched on demand into the store's `loras/job/` area
(see store.py), and the safetensors header check against the Wan2.2 model (header.py)."""

from i2v_worker.store.job_loras.store import (JobLoraError, JobLoraStatus, JobLoraStore, LoraRequest, PreparedLoras,
                                              ReadyLora, parse_lora_source)

__all__ = ["JobLoraError", "JobLoraStatus", "JobLoraStore", "LoraRequest", "PreparedLoras", "ReadyLora",
           "parse_lora_source"]
