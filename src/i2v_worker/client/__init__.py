"""Client side of the job API: submit an image + prompt, follow progress, save the MP4.

`I2VClient` talks to a RunPod endpoint (`Endpoint.runpod`) or the local API server
(`Endpoint.local_api`); `i2v-worker submit` (client/cli.py) wraps it with a progress bar.
"""

from i2v_worker.client.api import (
    ClientError,
    Endpoint,
    I2VClient,
    JobFailed,
    JobState,
    JobStatus,
    ProgressUpdate,
    VideoResult,
    WaitTimeout,
    build_input,
)

__all__ = [
    "ClientError",
    "Endpoint",
    "I2VClient",
    "JobFailed",
    "JobState",
    "JobStatus",
    "ProgressUpdate",
    "VideoResult",
    "WaitTimeout",
    "build_input",
]
