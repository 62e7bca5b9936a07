"""Turn ComfyUI's error payloads into one readable line each (`EngineError`), details kept aside.

Three sources:
- `POST /prompt` answering 400 with `node_errors` (validation: a model file not in a loader's list,
  a bad input value, a missing node class) -> `prompt_rejected_error`;
- the `execution_error` message (websocket or `/history` status messages) -> `execution_error`;
- node classes absent from `/object_info` -> `missing_nodes_error`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from i2v_worker.engines.base import EngineError
from i2v_worker.error_codes import ErrorCode

# (class_type, input name) -> ComfyUI model folder that input lists. Used to say where a missing
# model file should be and to check model names against /object_info before a job.
MODEL_INPUT_FOLDERS: dict[tuple[str, str], str] = {
    ("UnetLoaderGGUF", "unet_name"): "unet",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("CLIPLoaderGGUF", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("LoraLoader", "lora_name"): "loras",
}

# class_type -> where it comes from, for "X missing: ..." messages (graph.REQUIRED_NODES has the
# package name; this adds the folder a custom node package is installed into).
_CUSTOM_NODE_DIRS = {"ComfyUI-GGUF": "custom_nodes/ComfyUI-GGUF"}


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_node(graph: Mapping[str, Any], node_id: str, class_type: str | None = None) -> str:
    class_type = class_type or (graph.get(node_id) or {}).get("class_type") or "?"
    return f"{class_type} (node {node_id})"


def prompt_rejected_error(
    body: Any,
    graph: Mapping[str, Any],
    model_paths: Mapping[str, Path] | None = None,
) -> EngineError:
    """A 400 from `POST /prompt`. `model_paths` maps a model file name to its store path, so a
    missing model names the folder it should be in. Code `model_error` for a model file ComfyUI
    does not list, `invalid_graph` otherwise; the raw body goes to `details`."""
    model_paths = model_paths or {}
    if not isinstance(body, Mapping):
        return EngineError(f"ComfyUI rejected the graph: {_short(body, 300)}", code=ErrorCode.INVALID_GRAPH, details=body)
    node_errors = body.get("node_errors") or {}
    lines: list[str] = []
    code = ErrorCode.INVALID_GRAPH
    if isinstance(node_errors, Mapping):
        for node_id, entry in node_errors.items():
            entry = entry if isinstance(entry, Mapping) else {}
            class_type = entry.get("class_type") or (graph.get(node_id) or {}).get("class_type")
            for err in entry.get("errors") or []:
                line, is_model = _node_error_line(str(node_id), class_type, err, model_paths)
                lines.append(line)
                if is_model:
                    code = ErrorCode.MODEL_ERROR
    if not lines:
        err = body.get("error") or {}
        if isinstance(err, Mapping):
            extra = err.get("extra_info") or {}
            if err.get("type") == "missing_node_type" and isinstance(extra, Mapping):
                cls = extra.get("class_type") or "?"
                lines.append(f"{cls} missing: {_install_hint(cls, None)}")
            else:
                text = err.get("message") or err.get("type") or "unknown error"
                if err.get("details"):
                    text += f": {err['details']}"
                lines.append(text)
        else:
            lines.append(_short(err, 300))
    message = "ComfyUI rejected the graph: " + "; ".join(lines)
    return EngineError(message, code=code, details=body)


def _node_error_line(
    node_id: str, class_type: str | None, err: Any, model_paths: Mapping[str, Path]
) -> tuple[str, bool]:
    where = f"{class_type or '?'} (node {node_id})"
    if not isinstance(err, Mapping):
        return f"{where}: {_short(err)}", False
    extra = err.get("extra_info") or {}
    input_name = extra.get("input_name") if isinstance(extra, Mapping) else None
    received = extra.get("received_value") if isinstance(extra, Mapping) else None
    etype = err.get("type") or "error"
    folder = MODEL_INPUT_FOLDERS.get((class_type or "", input_name or ""))
    if etype == "value_not_in_list" and folder:
        path = model_paths.get(str(received))
        place = f"expected at {path}" if path else f"expected in ComfyUI's '{folder}' folder"
        return (
            f"{where} input {input_name}: model file {received!r} is not in ComfyUI's {folder} list "
            f"({place}; is the store listed in extra_model_paths.yaml?)"
        ), True
    text = f"{where}"
    if input_name:
        text += f" input {input_name}"
    text += f": {err.get('message') or etype}"
    if received is not None:
        text += f" (received {_short(received)})"
    details = err.get("details")
    if details and details not in (err.get("message"), input_name):
        text += f" [{_short(details, 200)}]"
    return text, False


def execution_error(data: Mapping[str, Any], graph: Mapping[str, Any] | None = None) -> EngineError:
    """The `execution_error` message: one line naming the node, the traceback in `details`."""
    node_id = str(data.get("node_id", "?"))
    node_type = data.get("node_type") or (graph or {}).get(node_id, {}).get("class_type") or "?"
    exc_type = data.get("exception_type") or "Exception"
    exc_msg = str(data.get("exception_message") or "").strip().splitlines()
    first = exc_msg[0] if exc_msg else ""
    message = f"ComfyUI failed in {node_type} (node {node_id}): {exc_type}: {first}".rstrip(": ")
    tb = data.get("traceback")
    details = {
        "node_id": node_id,
        "node_type": node_type,
        "exception_type": exc_type,
        "exception_message": data.get("exception_message"),
        "traceback": "".join(tb) if isinstance(tb, list) else tb,
    }
    code = ErrorCode.MODEL_ERROR if _looks_like_model_failure(node_type, exc_type) else "engine_error"
    if code is ErrorCode.MODEL_ERROR:
        inputs = (graph or {}).get(node_id, {}).get("inputs", {})
        model_file = next((v for k, v in inputs.items() if k.endswith("_name") and isinstance(v, str)), None)
        if model_file:
            details["model_file"] = model_file
            message += (f" (model file {model_file}: `i2v-worker models verify --full` finds a corrupt file"
                        " and the next fetch replaces it)")
    return EngineError(message, code=code, details=details)


def _looks_like_model_failure(node_type: str, exc_type: str) -> bool:
    """A loader failing (corrupt/truncated file) is a model problem, not an engine bug."""
    return node_type.endswith(("Loader", "LoaderGGUF", "LoaderModelOnly"))


def _install_hint(class_type: str, package: str | None) -> str:
    if package and package != "ComfyUI core":
        folder = _CUSTOM_NODE_DIRS.get(package, f"custom_nodes/{package}")
        return f"{package} is not installed ({folder})"
    if package == "ComfyUI core":
        return "this ComfyUI is too old for the graph (it is a core node in ComfyUI >= 0.3.60); update ComfyUI"
    return "no installed node provides it (a custom node package is missing or failed to import)"


def missing_nodes_message(missing: list[str], packages: Mapping[str, str], import_failures: list[str] | None = None) -> str:
    """E.g. "UnetLoaderGGUF missing: ComfyUI-GGUF is not installed (custom_nodes/ComfyUI-GGUF)"."""
    parts = [f"{cls} missing: {_install_hint(cls, packages.get(cls))}" for cls in missing]
    message = "; ".join(parts)
    if import_failures:
        message += f" (ComfyUI reported import failures: {', '.join(import_failures)})"
    return message


def missing_nodes_error(missing: list[str], packages: Mapping[str, str], import_failures: list[str] | None = None) -> EngineError:
    return EngineError(
        missing_nodes_message(missing, packages, import_failures),
        code=ErrorCode.INVALID_GRAPH,  # ComfyUI runs; the graph needs a node it lacks (README: invalid_graph)
        details={"missing_nodes": missing, "import_failures": import_failures or []},
    )
