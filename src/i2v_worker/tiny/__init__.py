"""Tiny stand-ins of the five production model files: real formats, random weights, a few MB.

`generate_tiny_models(out_dir)` writes Q5_0 GGUF experts, a Wan2.1 VAE, an fp8-scaled UMT5 with
an embedded SentencePiece model, and a lightx2v-layout LoRA, so tests, `make run` and CI exercise
the same loaders as production without downloading 27 GB. `TINY_FILES` names them per role.
"""

from i2v_worker.tiny.generate import TINY_FILES, TinySpec, generate_tiny_models

__all__ = ["TINY_FILES", "TinySpec", "generate_tiny_models"]
