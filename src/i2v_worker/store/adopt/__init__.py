"""Adoption: use a model file the machine already has instead of downloading it.

Before the store downloads a model (inside the download lease, so two workers never adopt or
download the same model at once) it looks for a copy in Hugging Face hub caches (RunPod's cached
models at /runpod-volume/huggingface-cache/hub, HF_HUB_CACHE, HF_HOME/hub, the default user
cache, I2V_HF_CACHES) and in ComfyUI `models` folders (I2V_COMFYUI_MODEL_DIRS). Three jobs, one
module each:

- `candidates`: where a copy might be (no I/O beyond `stat`/`listdir`, no hashing);
- `verify`: whether a candidate is the entry's bytes (size always, then one sha256 pass against
  the manifest's pin, else the cache's etag, else the server's X-Linked-Etag);
- `link`: put it under the model's name without copying (hard link on the same filesystem, else a
  symlink) and publish it atomically; the source is never opened for writing, moved or deleted.

`Adopter.adopt` runs the three in order and writes the verification record (with `adopted_from`);
`plan` answers `models fetch --dry-run` (what would be adopted from where, bytes left to download).
"""

from __future__ import annotations

from i2v_worker.store.adopt.adopter import Adopter, AdoptResult
from i2v_worker.store.adopt.candidates import Candidate, CandidateFinder
from i2v_worker.store.adopt.plan import FetchPlan, PlanItem, origin_text, plan_fetch

__all__ = ["Adopter", "AdoptResult", "Candidate", "CandidateFinder", "FetchPlan", "PlanItem", "origin_text",
           "plan_fetch"]
