"""TEST-ONLY stand-in for ComfyUI-GGUF's `UnetLoaderGGUF` node (i2v-worker test suite).

ComfyUI-GGUF (city96) is not on PyPI and GitHub is unreachable where the tests run, so the tests
load the GGUF experts with this node instead. Same class name and input (`unet_name`, the .gguf
files of ComfyUI's diffusion_models/unet folders), so the production graph runs unchanged.

Unlike the real node (which keeps tensors quantized and dequantizes on the fly), this one
dequantizes every tensor up front with the `gguf` package, reshapes it to the reversed GGUF shape
(or the `comfy.gguf.orig_shape.<name>` metadata ComfyUI-GGUF's converter writes for 5-D tensors),
and calls `comfy.sd.load_diffusion_model_state_dict`. That is fine for tiny files only.
Production images install the real ComfyUI-GGUF at a pinned commit; never ship this node.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.sd
import folder_paths

_GGUF_FOLDER = "unet_gguf"  # the folder key ComfyUI-GGUF registers
_ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."


def _register_gguf_folder() -> None:
    # Like ComfyUI-GGUF: a folder key that shares the diffusion_models (= unet) path LIST object,
    # so paths added later (extra_model_paths.yaml) are seen, filtered to the .gguf extension.
    paths, _ = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths[_GGUF_FOLDER] = (paths, {".gguf"})


_register_gguf_folder()


def load_gguf_state_dict(path: str) -> dict[str, torch.Tensor]:
    import gguf

    reader = gguf.GGUFReader(path)
    orig_shapes: dict[str, tuple[int, ...]] = {}
    for name, field in reader.fields.items():
        if name.startswith(_ORIG_SHAPE_PREFIX):
            orig_shapes[name[len(_ORIG_SHAPE_PREFIX):]] = tuple(int(field.parts[i][0]) for i in field.data)
    sd: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        shape = orig_shapes.get(tensor.name) or tuple(int(x) for x in reversed(tensor.shape))
        arr = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        sd[tensor.name] = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True).reshape(shape))
    return sd


class UnetLoaderGGUF:
    """TEST-ONLY stand-in for ComfyUI-GGUF's UnetLoaderGGUF: loads a GGUF diffusion model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folder_paths.get_filename_list(_GGUF_FOLDER),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "bootleg"
    TITLE = "Unet Loader (GGUF) [test-only stand-in]"
    DESCRIPTION = "Test-only stand-in for ComfyUI-GGUF's UnetLoaderGGUF (i2v-worker tests); dequantizes the whole file."

    def load_unet(self, unet_name: str):
        path = folder_paths.get_full_path_or_raise(_GGUF_FOLDER, unet_name)
        try:
            sd = load_gguf_state_dict(path)
        except Exception as exc:  # a truncated/corrupt file: say which one
            raise RuntimeError(f"cannot read GGUF file {unet_name}: {exc}") from exc
        n_tensors = len(sd)
        model = comfy.sd.load_diffusion_model_state_dict(sd)  # (consumes sd)
        if model is None:
            raise RuntimeError(f"Could not detect the model type of {unet_name} (test GGUF stand-in)")
        logging.info("i2v test GGUF stand-in loaded %s (%d tensors)", unet_name, n_tensors)
        return (model,)


NODE_CLASS_MAPPINGS = {"UnetLoaderGGUF": UnetLoaderGGUF}
NODE_DISPLAY_NAME_MAPPINGS = {"UnetLoaderGGUF": "Unet Loader (GGUF) [test-only stand-in]"}
