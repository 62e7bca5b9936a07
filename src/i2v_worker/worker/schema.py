"""The job API: what a client sends (`JobInput`) and gets back (`JobOutput` / `ErrorOutput`).

`parse_job_input(raw)` is the one entry: it maps the predecessor worker's deprecated field names,
validates every field (collecting ALL problems, each naming its field and rule), checks the rules
that span fields, and returns a `ParsedJob` (the validated input plus deprecation warnings) or
raises `InvalidInput(details)`. `i2v-worker schema` prints `input_json_schema()`.
"""

from __future__ import annotations

import json

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from i2v_worker.error_codes import ErrorCode
from i2v_worker.video.encode import DEFAULT_FORMAT, FORMATS, VideoFormat, check_quality

# Wan's standard negative prompt (the one Wan2.x's own examples and the ComfyUI Wan templates use).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

PROMPT_MAX_CHARS = 2000
DIM_MIN, DIM_MAX, DIM_MULTIPLE = 32, 1280, 16
AREA_MAX = 1280 * 720  # 720p: the largest area the 14B experts are run at
DEFAULT_AREA = 832 * 480  # 480p, the lightx2v LoRA's training resolution
LENGTH_MIN, LENGTH_MAX, LENGTH_DEFAULT = 5, 161, 81
FPS_MIN, FPS_MAX, FPS_DEFAULT = 1, 60, 16
STEPS_MAX = 100
# ComfyUI's seed input takes 0..2**64-1; torch.Generator.manual_seed takes the same range.
SEED_MAX = 2**64 - 1
# Seeds drawn for the client stay below 2**53 so JavaScript clients can send them back exactly.
RANDOM_SEED_MAX = 2**53 - 1
LORA_STRENGTH_LIMIT = 10.0

DEPRECATED_ALIASES = {"image_path": "image_base64", "video_length": "length", "frame_rate": "fps"}
IMAGE_FIELDS = ("image_url", "image_base64")
END_IMAGE_FIELDS = ("end_image_url", "end_image_base64")
LORAS_MAX = 8


class LoraSpec(BaseModel):
    """One job LoRA: where it comes from and how strongly it applies to each expert."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="hf://org/repo@revision/path.safetensors, an https:// URL (public hosts only), "
                        "or the file name of a LoRA already in the store's loras folder")
    sha256: str | None = Field(None, description="expected sha256 of the file (64 hex characters): verified, and "
                               "lets a job find the stored file without asking the network")
    strength_high: float = Field(1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT,
                                 description="strength on the high-noise expert (0: not applied there)")
    strength_low: float = Field(1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT,
                                description="strength on the low-noise expert (0: not applied there)")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        from i2v_worker.store.job_loras.store import parse_lora_source

        try:
            parse_lora_source(v)
        except ValueError as exc:
            raise PydanticCustomError("lora_source", "{reason}", {"reason": str(exc)}) from None
        return v.strip()

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise PydanticCustomError("sha256", "must be 64 hexadecimal characters")
        return v


class LoraPair(BaseModel):
    """DEPRECATED shape of the most used Wan worker: one high-noise and one low-noise file by name."""

    model_config = ConfigDict(extra="forbid")

    high: str | None = Field(None, description="LoRA applied to the high-noise expert")
    low: str | None = Field(None, description="LoRA applied to the low-noise expert")
    high_weight: float = Field(1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT)
    low_weight: float = Field(1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT)


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery: Literal["auto", "base64", "url"] = Field(
        "auto",
        description="auto: upload to the bucket when one is configured, else inline base64; "
        "base64: always inline (fails with output_too_large over the limit); url: always upload "
        "(fails when no bucket is configured)",
    )
    format: Literal["mp4", "webm", "gif"] = Field(
        DEFAULT_FORMAT.value,
        description="; ".join(f"{f.value}: {s.description} ({s.mime_type})" for f, s in FORMATS.items()))
    quality: int | None = Field(
        None, description="crf-like, lower is better: " + "; ".join(
            f"{f.value} {s.quality_min}..{s.quality_max} (default {s.default_quality})" for f, s in FORMATS.items()
            if s.quality_min is not None) + "; gif has none")


class JobInput(BaseModel):
    """`job["input"]` of a generation request. Unknown fields are rejected by name."""

    model_config = ConfigDict(extra="forbid", title="i2v-worker job input")

    image_url: str | None = Field(
        None, description="http(s) URL of the start image (public hosts only; redirects are re-checked). "
        "Exactly one of image_url and image_base64.")
    image_base64: str | None = Field(
        None, description="the start image as base64, plain or as a data URI (data:image/png;base64,...). "
        "Exactly one of image_url and image_base64.")
    prompt: str = Field(description=f"what happens in the video (1..{PROMPT_MAX_CHARS} characters)")
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT, max_length=PROMPT_MAX_CHARS,
        description="what to avoid (default: Wan's standard negative prompt)")
    width: int | None = Field(
        None, description=f"video width in pixels: a multiple of {DIM_MULTIPLE} in [{DIM_MIN}, {DIM_MAX}], "
        f"width*height <= {AREA_MAX}. Default: from the image's aspect ratio at the 480p area (832*480)")
    height: int | None = Field(
        None, description=f"video height in pixels (same rules as width)")
    length: int = Field(
        LENGTH_DEFAULT, description=f"number of frames: 4k+1 in [{LENGTH_MIN}, {LENGTH_MAX}] "
        f"(81 = 5 s at 16 fps)")
    fps: int = Field(FPS_DEFAULT, ge=FPS_MIN, le=FPS_MAX,
                     description="frames per second of the generated frames (the video's rate is fps * interpolate)")
    interpolate: Literal[1, 2, 4] = Field(
        1, description="frame interpolation factor (RIFE v4.26, run by the worker after generation): 1 = off; "
        "2 or 4 give (length-1)*k+1 frames at k*fps (81 frames at 16 fps -> 161 at 32 fps with 2). The RIFE "
        "model is downloaded by the first job that asks for it")
    steps: int = Field(4, ge=1, le=STEPS_MAX, description="sampling steps over both experts (4 with the lightx2v LoRA)")
    high_noise_steps: int | None = Field(
        None, ge=1, le=STEPS_MAX, description="steps run by the high-noise expert before it hands over to "
        "the low-noise expert: 1 <= high_noise_steps <= steps (equal to steps: the low-noise expert does "
        "nothing). Default: steps // 2, at least 1")
    cfg: float = Field(1.0, ge=0.0, le=30.0, description="classifier-free guidance scale (1.0 = off, as the LoRA expects)")
    shift: float = Field(8.0, gt=0.0, le=100.0, description="sigma shift of the flow-matching schedule (ModelSamplingSD3)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="noise seed; random when absent, always returned")
    lora_strength_high: float = Field(
        1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT,
        description="lightx2v LoRA strength on the high-noise expert (0 disables it there)")
    lora_strength_low: float = Field(
        1.0, ge=-LORA_STRENGTH_LIMIT, le=LORA_STRENGTH_LIMIT,
        description="lightx2v LoRA strength on the low-noise expert; when both strengths are 0 the LoRA "
        "file is neither needed nor downloaded")
    output: OutputOptions = Field(default_factory=OutputOptions, description="how the video is returned")
    end_image_url: str | None = Field(
        None, description="http(s) URL of the last frame (first-last-frame video; same rules as image_url). "
        "At most one of end_image_url and end_image_base64")
    end_image_base64: str | None = Field(
        None, description="the last frame as base64 (plain or data URI); fitted to the video size like the start image")
    loras: list[LoraSpec] | None = Field(
        None, description=f"job LoRAs (at most {LORAS_MAX}), each {{source, sha256?, strength_high, strength_low}}; "
        "downloaded once into the store, verified, reused by later jobs. A high/low pair of files is two entries "
        "(strength_low 0 on one, strength_high 0 on the other)")

    # Deprecated names of the predecessor worker (mapped by parse_job_input; listed for the schema).
    image_path: str | None = Field(
        None, json_schema_extra={"deprecated": True},
        description="DEPRECATED alias of image_base64 (base64 data only: a filesystem path is never read)")
    video_length: int | None = Field(None, json_schema_extra={"deprecated": True}, description="DEPRECATED alias of length")
    frame_rate: int | None = Field(None, json_schema_extra={"deprecated": True}, description="DEPRECATED alias of fps")
    lora_pairs: list[LoraPair] | None = Field(
        None, json_schema_extra={"deprecated": True},
        description="DEPRECATED (the most used Wan worker's shape): [{high, low, high_weight, low_weight}] by file "
        "name; translated to loras")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise PydanticCustomError("non_empty", "must not be empty")
        if len(v) > PROMPT_MAX_CHARS:
            raise PydanticCustomError(
                "max_length", "is {n} characters, more than the limit of {limit}",
                {"n": len(v), "limit": PROMPT_MAX_CHARS})
        return v

    @field_validator("width", "height")
    @classmethod
    def _dim(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if v % DIM_MULTIPLE:
            raise PydanticCustomError(
                "multiple_of_16", "must be a multiple of 16 (got {v}; e.g. {near})",
                {"v": v, "near": max(DIM_MIN, round(v / DIM_MULTIPLE) * DIM_MULTIPLE)})
        if not DIM_MIN <= v <= DIM_MAX:
            raise PydanticCustomError(
                "range", "must be between {lo} and {hi} (got {v})", {"lo": DIM_MIN, "hi": DIM_MAX, "v": v})
        return v

    @field_validator("length", "video_length")
    @classmethod
    def _length(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if not LENGTH_MIN <= v <= LENGTH_MAX:
            raise PydanticCustomError(
                "range", "must be between {lo} and {hi} frames (got {v})", {"lo": LENGTH_MIN, "hi": LENGTH_MAX, "v": v})
        if (v - 1) % 4:
            lo = (v - 1) // 4 * 4 + 1
            raise PydanticCustomError(
                "4k_plus_1", "must be 4k+1 frames (got {v}; e.g. {lo} or {hi})", {"v": v, "lo": lo, "hi": lo + 4})
        return v

    @field_validator("frame_rate")
    @classmethod
    def _frame_rate(cls, v: int | None) -> int | None:
        if v is not None and not FPS_MIN <= v <= FPS_MAX:
            raise PydanticCustomError("range", "must be between {lo} and {hi} (got {v})", {"lo": FPS_MIN, "hi": FPS_MAX, "v": v})
        return v

    @field_validator("image_url", "end_image_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        scheme = v.split(":", 1)[0].lower() if ":" in v else ""
        if scheme not in ("http", "https"):
            raise PydanticCustomError(
                "scheme", "only http and https URLs are fetched (got scheme '{scheme}')", {"scheme": scheme or v[:20]})
        return v

    @field_validator("image_base64", "end_image_base64")
    @classmethod
    def _b64(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise PydanticCustomError("non_empty", "must not be empty")
        return v

    @field_validator("image_path")
    @classmethod
    def _image_path(cls, v: str | None) -> str | None:
        if v is not None and looks_like_path(v):
            raise PydanticCustomError(
                "not_a_path",
                "looks like a filesystem path ('{v}'); this worker never reads files: send the image "
                "bytes as base64 in image_base64, or a URL in image_url", {"v": v[:80]})
        return v

    @property
    def delivery(self) -> str:
        return self.output.delivery

    def effective_high_noise_steps(self) -> int:
        return self.high_noise_steps if self.high_noise_steps is not None else max(1, self.steps // 2)


_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]*$")


def looks_like_path(value: str) -> bool:
    """True for strings that are clearly a filesystem path rather than base64 image data.

    Base64 may contain '/' (a JPEG's base64 even starts with '/9j/'), so: anything with characters
    base64 never has ('.', '\\', ':', '~', ...) outside a data URI, or a short string that starts
    like an absolute or relative path.
    """
    v = value.strip()
    if v.startswith("data:"):
        return False
    if not _B64_CHARS.match(v):
        return True
    return len(v) < 1024 and v.startswith("/") and not v.startswith("/9j/")


class HealthAction(BaseModel):
    model_config = ConfigDict(extra="forbid", title="health check")
    action: Literal["health"] = Field(description="return the worker's state without generating")


class Timings(BaseModel):
    image: float = Field(0.0, description="fetching/decoding the input image")
    models: float = Field(0.0, description="making sure the models are in the store (downloads included)")
    engine_start: float = Field(0.0, description="waiting for the engine to start (first job after boot)")
    queue: float = Field(0.0, description="waiting inside the engine before execution started")
    inference: float = Field(0.0, description="sampling and decoding")
    interpolate: float = Field(0.0, description="frame interpolation (0 when interpolate is 1)")
    encode: float = Field(0.0, description="encoding the final file (MP4, WebM or GIF)")
    upload: float = Field(0.0, description="bucket upload")
    total: float = Field(0.0, description="the whole job inside the worker")


class JobOutput(BaseModel):
    """A successful job's result."""

    model_config = ConfigDict(title="i2v-worker job output")

    video: str | None = Field(None, description="the video file as base64 (when not uploaded)")
    video_url: str | None = Field(None, description="presigned GET URL of the uploaded video")
    mime_type: Literal["video/mp4", "video/webm", "image/gif"] = Field(
        "video/mp4", description="of the file: follows output.format")
    format: Literal["mp4", "webm", "gif"] = "mp4"
    seed: int
    width: int
    height: int
    frames: int = Field(description="frames in the file (after interpolation)")
    fps: int = Field(description="frame rate of the file (after interpolation)")
    timings: Timings
    warnings: list[str] | None = None


class ErrorDetail(BaseModel):
    field: str | None = None
    rule: str | None = None
    message: str


class ErrorOutput(BaseModel):
    model_config = ConfigDict(title="i2v-worker error")

    error: str = Field(description="one readable line: what failed and what to do")
    error_code: ErrorCode = Field(description="what failed (the README's troubleshooting table says what to do)")
    details: list[ErrorDetail] | dict[str, Any] | None = None


class InvalidInput(Exception):
    """The input breaks one or more rules; `details` names each field and rule."""

    def __init__(self, details: list[ErrorDetail]):
        self.details = details
        parts = [f"{d.field}: {d.message}" if d.field else d.message for d in details]
        super().__init__("invalid input: " + "; ".join(parts))

    def to_output(self) -> dict[str, Any]:
        return {"error": str(self), "error_code": ErrorCode.INVALID_INPUT,
                "details": [d.model_dump(exclude_none=True) for d in self.details]}


@dataclass
class ParsedJob:
    input: JobInput
    warnings: list[str] = field(default_factory=list)


def parse_job_input(raw: Any) -> ParsedJob:
    """Validate `job["input"]`; raise InvalidInput naming every bad field."""
    if not isinstance(raw, dict):
        raise InvalidInput([ErrorDetail(field="input", rule="type",
                                        message=f"input must be a JSON object, got {type(raw).__name__}")])
    details: list[ErrorDetail] = []
    warnings: list[str] = []
    data = dict(raw)
    for old, new in DEPRECATED_ALIASES.items():
        if old in data and data[old] is not None:
            if data.get(new) is not None:
                details.append(ErrorDetail(field=old, rule="conflict",
                                           message=f"give only one of {new} and its deprecated alias {old}"))
            else:
                warnings.append(f"'{old}' is deprecated: use '{new}'")
    try:
        job = JobInput.model_validate(data)
    except ValidationError as exc:
        job = None
        details.extend(_pydantic_details(exc))
    given_images = [f for f in (*IMAGE_FIELDS, "image_path") if data.get(f) is not None]
    if not given_images:
        details.append(ErrorDetail(field="image_url", rule="one_image",
                                   message="one of image_url or image_base64 is required"))
    elif len(given_images) > 1 and not any(d.rule == "conflict" for d in details):
        details.append(ErrorDetail(field=given_images[1], rule="one_image",
                                   message=f"give exactly one image: {' and '.join(given_images)} were both given"))
    bad = {d.field for d in details}
    steps = _int_or_none(data.get("steps", 4)) if "steps" not in bad else None
    hns = _int_or_none(data.get("high_noise_steps")) if "high_noise_steps" not in bad else None
    if steps is not None and hns is not None and hns > steps:
        details.append(ErrorDetail(field="high_noise_steps", rule="le_steps",
                                   message=f"must be at most steps ({steps}), got {hns}"))
    w = _int_or_none(data.get("width")) if "width" not in bad else None
    h = _int_or_none(data.get("height")) if "height" not in bad else None
    if w is not None and h is not None and w * h > AREA_MAX:
        details.append(ErrorDetail(field="width", rule="area",
                                   message=f"width*height = {w}*{h} = {w * h} is over the limit of {AREA_MAX} (1280*720)"))
    details.extend(_end_image_and_lora_rules(data, warnings))
    output = data.get("output")
    if isinstance(output, dict) and not any((d.field or "").startswith("output") for d in details):
        fmt = output.get("format", DEFAULT_FORMAT.value)
        quality = output.get("quality")
        problem = check_quality(fmt, quality) if isinstance(quality, int) and fmt in {f.value for f in VideoFormat} else None
        if problem:
            details.append(ErrorDetail(field="output.quality", rule="range" if "between" in problem else "not_applicable",
                                       message=problem))
    if details or job is None:
        raise InvalidInput(details)
    update: dict[str, Any] = {}
    if job.image_path is not None:
        update.update(image_base64=job.image_path, image_path=None)
    if job.video_length is not None:
        update.update(length=job.video_length, video_length=None)
    if job.frame_rate is not None:
        update.update(fps=job.frame_rate, frame_rate=None)
    if job.lora_pairs is not None:
        update.update(loras=lora_pairs_to_loras(job.lora_pairs), lora_pairs=None)
    if update:
        job = job.model_copy(update=update)
    return ParsedJob(job, warnings)


def lora_pairs_to_loras(pairs: list[LoraPair]) -> list[LoraSpec]:
    """`lora_pairs` -> `loras`: the high file on the high-noise expert only, the low file on the
    low-noise expert only (one entry with both strengths when both name the same file)."""
    out: list[LoraSpec] = []
    for p in pairs:
        if p.high and p.high == p.low:
            out.append(LoraSpec(source=p.high, strength_high=p.high_weight, strength_low=p.low_weight))
            continue
        if p.high:
            out.append(LoraSpec(source=p.high, strength_high=p.high_weight, strength_low=0.0))
        if p.low:
            out.append(LoraSpec(source=p.low, strength_high=0.0, strength_low=p.low_weight))
    return out


def _end_image_and_lora_rules(data: dict, warnings: list[str]) -> list[ErrorDetail]:
    details: list[ErrorDetail] = []
    given_end = [f for f in END_IMAGE_FIELDS if data.get(f) is not None]
    if len(given_end) > 1:
        details.append(ErrorDetail(field=given_end[1], rule="one_image",
                                   message="give at most one end image: end_image_url and end_image_base64 were both given"))
    loras, pairs = data.get("loras"), data.get("lora_pairs")
    if pairs is not None:
        if loras is not None:
            details.append(ErrorDetail(field="lora_pairs", rule="conflict",
                                       message="give only one of loras and its deprecated alias lora_pairs"))
        else:
            warnings.append("'lora_pairs' is deprecated: use 'loras' ([{source, strength_high, strength_low}]; "
                            "a pair is two entries)")
        if isinstance(pairs, list):
            for i, p in enumerate(pairs):
                if isinstance(p, dict) and not p.get("high") and not p.get("low"):
                    details.append(ErrorDetail(field=f"lora_pairs.{i}", rule="required",
                                               message="a LoRA pair needs high, low or both"))
            n = sum((1 if p.get("high") else 0) + (1 if p.get("low") and p.get("low") != p.get("high") else 0)
                    for p in pairs if isinstance(p, dict))
            if n > LORAS_MAX:
                details.append(ErrorDetail(field="lora_pairs", rule="max_length",
                                           message=f"names {n} LoRA files, more than the limit of {LORAS_MAX}"))
    if isinstance(loras, list) and len(loras) > LORAS_MAX:
        details.append(ErrorDetail(field="loras", rule="max_length",
                                   message=f"has {len(loras)} entries, more than the limit of {LORAS_MAX}"))
    return details


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _pydantic_details(exc: ValidationError) -> list[ErrorDetail]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or None
        rule = err["type"]
        msg = err["msg"]
        if rule == "extra_forbidden":
            rule, msg = "unknown_field", f"unknown field {loc!r} (see `i2v-worker schema` for the accepted fields)"
        elif rule == "model_type":
            msg = f"{loc} must be an object, e.g. {{\"delivery\": \"auto\"}}" if loc == "output" else f"{loc} must be an object"
        elif rule == "missing":
            msg = f"{loc} is required"
        elif rule.startswith(("greater_than", "less_than")):
            msg = f"{msg} (got {err.get('input')!r})"
        out.append(ErrorDetail(field=loc, rule=rule, message=msg))
    return out


def resolve_size(job: JobInput, image_width: int, image_height: int) -> tuple[int, int]:
    """The video size: the job's, or derived from the image's aspect ratio at the 480p area.

    With only one side given, the other follows the image's aspect ratio. Results are multiples of
    16 within [DIM_MIN, DIM_MAX] and the area cap.
    """
    aspect = image_width / image_height if image_width > 0 and image_height > 0 else 832 / 480
    if job.width is not None and job.height is not None:
        return job.width, job.height
    if job.width is not None:
        w = job.width
        h = _fit(w / aspect, limit=AREA_MAX / w)
        return w, h
    if job.height is not None:
        h = job.height
        return _fit(h * aspect, limit=AREA_MAX / h), h
    h = math.sqrt(DEFAULT_AREA / aspect)
    w, h = _fit(h * aspect), _fit(h)
    while w * h > AREA_MAX:  # extreme aspect ratios after clamping
        w, h = (w - DIM_MULTIPLE, h) if w > h else (w, h - DIM_MULTIPLE)
    return w, h


def _fit(x: float, limit: float = DIM_MAX) -> int:
    top = min(DIM_MAX, int(limit) // DIM_MULTIPLE * DIM_MULTIPLE)
    return int(max(DIM_MIN, min(top, math.floor(x / DIM_MULTIPLE + 0.5) * DIM_MULTIPLE)))  # half up


def input_json_schema() -> dict[str, Any]:
    """JSON Schema of `job["input"]`: a generation job (exactly one image field) or the health action."""
    job = JobInput.model_json_schema()
    job["oneOf"] = [{"required": ["image_url"]}, {"required": ["image_base64"]}, {"required": ["image_path"]}]
    health = HealthAction.model_json_schema()
    defs = job.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "i2v-worker input",
        "description": 'job["input"] of a RunPod request: an image-to-video job, or {"action": "health"}',
        "oneOf": [{"$ref": "#/$defs/JobInput"}, {"$ref": "#/$defs/HealthAction"}],
        "$defs": {**defs, "JobInput": job, "HealthAction": health},
    }


def input_markdown_table() -> str:
    """The job input fields as a Markdown table (the README's job API section is this output)."""
    import typing

    def kind_of(ann: Any) -> str:
        if typing.get_origin(ann) is Literal:
            return " / ".join(json.dumps(a) for a in typing.get_args(ann))
        kind = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        return kind.replace(" | None", "").replace("Optional[", "").rstrip("]")

    rows = ["| Field | Type | Default | Rule |", "|---|---|---|---|"]
    for name, field in JobInput.model_fields.items():
        kind = kind_of(field.annotation)
        default = "" if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        shown = "required" if field.is_required() else ("" if default is None else f"`{json.dumps(default, ensure_ascii=False)}`")
        if name == "negative_prompt":
            shown = "Wan's standard negative prompt"
        desc = (field.description or "").replace("|", "/")
        kind = _list_kind(kind)
        rows.append(f"| `{name}` | {kind} | {shown} | {desc} |")
        nested = {"loras": ("loras[]", LoraSpec), "output": ("output", OutputOptions)}.get(name)
        if nested is not None:  # the fields of the nested object, one row each
            prefix, model = nested
            for sub, sfield in model.model_fields.items():
                sdefault = None if sfield.is_required() else sfield.get_default(call_default_factory=True)
                sshown = "required" if sfield.is_required() else ("" if sdefault is None else f"`{json.dumps(sdefault)}`")
                rows.append(f"| `{prefix}.{sub}` | {kind_of(sfield.annotation)} | {sshown} | "
                            f"{(sfield.description or '').replace('|', '/')} |")
    rows.append('| `action` | "health" | | instead of a job: `{"action": "health"}` returns the store\'s per-model '
                "state, engine readiness and versions, device and worker version, without generating |")
    return "\n".join(rows)


def _list_kind(kind: str) -> str:
    """`list[i2v_worker.worker.schema.LoraSpec` (after the Optional strip) -> `list[LoraSpec]`."""
    if kind.startswith("list["):
        kind = kind.replace(__name__ + ".", "")
        return kind if kind.endswith("]") else kind + "]"
    return kind


def output_json_schema() -> dict[str, Any]:
    ok, err = JobOutput.model_json_schema(), ErrorOutput.model_json_schema()
    defs = {**ok.pop("$defs", {}), **err.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "i2v-worker output",
        "oneOf": [{"$ref": "#/$defs/JobOutput"}, {"$ref": "#/$defs/ErrorOutput"}],
        "$defs": {**defs, "JobOutput": ok, "ErrorOutput": err},
    }
