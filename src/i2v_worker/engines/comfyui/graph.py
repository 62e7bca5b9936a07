"""The one production ComfyUI graph (API format) for Wan2.2 I2V with two GGUF experts.

UnetLoaderGGUF(high/low) -> LoraLoaderModelOnly (lightx2v; skipped for an expert whose strength is
0 or when no LoRA is given) -> one LoraLoaderModelOnly per job LoRA (none where its strength is 0)
-> ModelSamplingSD3(shift) each; CLIPLoader(type "wan") ->
CLIPTextEncode positive/negative; VAELoader; LoadImage; WanImageToVideo (WanFirstLastFrameToVideo with a second LoadImage when the
job has an end image); KSamplerAdvanced on the
high-noise expert for steps [0, high_noise_steps) returning leftover noise -> KSamplerAdvanced on
the low-noise expert for the rest; VAEDecode -> SaveAnimatedPNG (lossless, compress_level 0).

The graph ends in lossless frames, not a video: the worker reads them back (comfyui/frames.py),
interpolates if asked and encodes the file with the one encoder both engines share
(i2v_worker.video.encode). ComfyUI's SaveAnimatedPNG converts floats to uint8 as
`clip(255 * x).astype(uint8)`, the rule `video.frames.to_uint8` applies for the diffusers engine.

Input names were checked against ComfyUI 0.3.75's `/object_info`. Node ids are readable names so
errors say e.g. "node sample_high (KSamplerAdvanced)".
"""

from __future__ import annotations

from typing import Any

from i2v_worker.engines.base import GenerationRequest, ModelRole

# class_type -> the package that provides it (for "X missing: install Y" messages)
REQUIRED_NODES: dict[str, str] = {
    "UnetLoaderGGUF": "ComfyUI-GGUF",
    "LoraLoaderModelOnly": "ComfyUI core",
    "ModelSamplingSD3": "ComfyUI core",
    "CLIPLoader": "ComfyUI core",
    "CLIPTextEncode": "ComfyUI core",
    "VAELoader": "ComfyUI core",
    "LoadImage": "ComfyUI core",
    "WanImageToVideo": "ComfyUI core",
    "WanFirstLastFrameToVideo": "ComfyUI core",
    "KSamplerAdvanced": "ComfyUI core",
    "VAEDecode": "ComfyUI core",
    "SaveAnimatedPNG": "ComfyUI core",
}

# Node ids the engine refers to.
OUTPUT_NODE = "save_frames"  # SaveAnimatedPNG: its history output lists the APNG under "images"
# SaveAnimatedPNG writes each frame with a delay of 1000/fps ms, and Pillow's APNG writer merges a
# frame equal to the one before into it (adding the delays): at fps 1 each merged frame's delay
# is a whole number of seconds, so comfyui/frames.py can count the repeats back exactly.
FRAME_DELAY_FPS = 1.0
SAMPLER_NODES = ("sample_high", "sample_low")  # progress: max is per sampler segment
# (node id, input name) that names each model file: for readable "model missing" errors
MODEL_INPUTS: dict[ModelRole, tuple[str, str]] = {
    ModelRole.HIGH_NOISE: ("load_high", "unet_name"),
    ModelRole.LOW_NOISE: ("load_low", "unet_name"),
    ModelRole.TEXT_ENCODER: ("load_text_encoder", "clip_name"),
    ModelRole.VAE: ("load_vae", "vae_name"),
    ModelRole.LORA: ("lora_high", "lora_name"),
}

SAMPLER = "euler"
SCHEDULER = "simple"


def needs_lora(request: GenerationRequest) -> bool:
    """Whether the graph for this request loads the LoRA file at all."""
    return request.lora_strength_high != 0 or request.lora_strength_low != 0


def build_graph(
    request: GenerationRequest,
    *,
    image_name: str,
    filename_prefix: str,
    model_names: dict[ModelRole, str],
    end_image_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The API-format graph for one job.

    `image_name` is the name ComfyUI's upload returned (with its subfolder, e.g. "sub/x.png");
    `filename_prefix` should be unique per job; `model_names` maps roles to ComfyUI file names
    (LORA may be absent when both strengths are 0).
    """
    for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE, ModelRole.TEXT_ENCODER, ModelRole.VAE):
        if role not in model_names:
            raise ValueError(f"build_graph: no model file given for role {role.value!r}")
    if not 0 <= request.high_noise_steps <= request.steps:
        raise ValueError(
            f"high_noise_steps must be between 0 and steps ({request.steps}), got {request.high_noise_steps}"
        )

    g: dict[str, dict[str, Any]] = {}

    def node(node_id: str, class_type: str, **inputs: Any) -> list[Any]:
        g[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    lora_name = model_names.get(ModelRole.LORA)
    experts: dict[str, list[Any]] = {}
    for tag, role, strength in (
        ("high", ModelRole.HIGH_NOISE, request.lora_strength_high),
        ("low", ModelRole.LOW_NOISE, request.lora_strength_low),
    ):
        model = node(f"load_{tag}", "UnetLoaderGGUF", unet_name=model_names[role])
        if lora_name and strength != 0:
            model = node(f"lora_{tag}", "LoraLoaderModelOnly", model=model, lora_name=lora_name,
                         strength_model=float(strength))
        model = _job_loras(node, model, request, tag)
        experts[tag] = node(f"shift_{tag}", "ModelSamplingSD3", model=model, shift=float(request.shift))

    clip = node("load_text_encoder", "CLIPLoader", clip_name=model_names[ModelRole.TEXT_ENCODER], type="wan")
    positive = node("encode_positive", "CLIPTextEncode", text=request.prompt, clip=clip)
    negative = node("encode_negative", "CLIPTextEncode", text=request.negative_prompt, clip=clip)
    vae = node("load_vae", "VAELoader", vae_name=model_names[ModelRole.VAE])
    image = node("load_image", "LoadImage", image=image_name)
    if request.end_image_png is not None:
        if not end_image_name:
            raise ValueError("build_graph: the request has an end image but no end_image_name was given")
        end = node("load_end_image", "LoadImage", image=end_image_name)
        node("image_to_video", "WanFirstLastFrameToVideo", positive=positive, negative=negative, vae=vae,
             width=request.width, height=request.height, length=request.length, batch_size=1, start_image=image,
             end_image=end)
    else:
        node("image_to_video", "WanImageToVideo", positive=positive, negative=negative, vae=vae,
             width=request.width, height=request.height, length=request.length, batch_size=1, start_image=image)
    cond_pos, cond_neg, latent = ["image_to_video", 0], ["image_to_video", 1], ["image_to_video", 2]

    common = dict(noise_seed=int(request.seed), steps=int(request.steps), cfg=float(request.cfg),
                  sampler_name=SAMPLER, scheduler=SCHEDULER, positive=cond_pos, negative=cond_neg)
    high = node("sample_high", "KSamplerAdvanced", model=experts["high"], add_noise="enable",
                latent_image=latent, start_at_step=0, end_at_step=int(request.high_noise_steps),
                return_with_leftover_noise="enable", **common)
    low = node("sample_low", "KSamplerAdvanced", model=experts["low"], add_noise="disable",
               latent_image=high, start_at_step=int(request.high_noise_steps), end_at_step=10000,
               return_with_leftover_noise="disable", **common)
    frames = node("decode", "VAEDecode", samples=low, vae=vae)
    node(OUTPUT_NODE, "SaveAnimatedPNG", images=frames, filename_prefix=filename_prefix, fps=FRAME_DELAY_FPS,
         compress_level=0)
    return g


def _job_loras(node, model: list[Any], request: GenerationRequest, tag: str) -> list[Any]:
    """Chain one LoraLoaderModelOnly per job LoRA on this expert (`lora_job{i}_{tag}`); a LoRA whose
    strength on this expert is 0 gets no node there."""
    for i, lora in enumerate(request.loras):
        strength = lora.strength_high if tag == "high" else lora.strength_low
        if strength != 0:
            model = node(f"lora_job{i}_{tag}", "LoraLoaderModelOnly", model=model, lora_name=lora.name,
                         strength_model=float(strength))
    return model
