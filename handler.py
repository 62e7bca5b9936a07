"""RunPod entry point: `python handler.py [SDK args]` starts the worker exactly as `i2v-worker serve`.

The RunPod Hub looks for a `handler.py` at the repository root; this is that file, not a copy of
the handler: it hands its arguments (e.g. `--rp_serve_api --rp_api_port 8000`) to the worker's
production serve path (`i2v_worker.worker.cli`), which boots ComfyUI, prefetches the preset's
models and runs `runpod.serverless.start`. The handler itself is `i2v_worker.worker.handler.Worker`.
"""

from __future__ import annotations

import sys

from i2v_worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
