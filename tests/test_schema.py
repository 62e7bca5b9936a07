"""The job API: every validation rule names its field and rule; defaults and deprecated aliases."""

from __future__ import annotations

import json

import pytest

from i2v_worker.worker.schema import (AREA_MAX, DEFAULT_NEGATIVE_PROMPT, InvalidInput, input_json_schema,
                                      output_json_schema, parse_job_input, resolve_size)

pytestmark = pytest.mark.timeout(30)

PNG_B64 = "iVBORw0KGgo="  # content is checked later, by the image decoder (tests/test_image_input.py)


def job(**kw):
    base = {"image_base64": PNG_B64, "prompt": "a cat walks"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


# (input overrides, field named in the details, rule, a word the message contains)
INVALID = [
    ({"prompt": ...}, "prompt", "missing", "required"),
    ({"prompt": "   "}, "prompt", "non_empty", "empty"),
    ({"prompt": "x" * 2001}, "prompt", "max_length", "2000"),
    ({"prompt": 5}, "prompt", "string_type", "string"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "string_too_long", "2000"),
    ({"image_base64": ...}, "image_url", "one_image", "required"),
    ({"image_url": "https://example.com/a.png"}, "image_base64", "one_image", "exactly one"),
    ({"image_base64": ..., "image_url": "file:///etc/passwd"}, "image_url", "scheme", "http"),
    ({"image_base64": ..., "image_url": "gopher://example.com/"}, "image_url", "scheme", "http"),
    ({"image_base64": ..., "image_url": "example.com/a.png"}, "image_url", "scheme", "http"),
    ({"image_base64": "  "}, "image_base64", "non_empty", "empty"),
    ({"width": 100, "height": 64}, "width", "multiple_of_16", "16"),
    ({"width": 64, "height": 72}, "height", "multiple_of_16", "16"),
    ({"width": 16, "height": 64}, "width", "range", "between"),
    ({"width": 1296, "height": 64}, "width", "range", "1280"),
    ({"width": 1280, "height": 1280}, "width", "area", "921600"),
    ({"width": "wide"}, "width", "int_parsing", "integer"),
    ({"length": 80}, "length", "4k_plus_1", "4k+1"),
    ({"length": 1}, "length", "range", "between"),
    ({"length": 165}, "length", "range", "161"),
    ({"fps": 0}, "fps", "greater_than_equal", "1"),
    ({"fps": 61}, "fps", "less_than_equal", "60"),
    ({"steps": 0}, "steps", "greater_than_equal", "1"),
    ({"steps": 101}, "steps", "less_than_equal", "100"),
    ({"steps": 4, "high_noise_steps": 5}, "high_noise_steps", "le_steps", "at most steps"),
    ({"high_noise_steps": 0}, "high_noise_steps", "greater_than_equal", "1"),
    ({"cfg": -1}, "cfg", "greater_than_equal", "0"),
    ({"cfg": 31}, "cfg", "less_than_equal", "30"),
    ({"shift": 0}, "shift", "greater_than", "0"),
    ({"seed": -1}, "seed", "greater_than_equal", "0"),
    ({"seed": 2**64}, "seed", "less_than_equal", "18446744073709551615"),
    ({"lora_strength_high": 11}, "lora_strength_high", "less_than_equal", "10"),
    ({"lora_strength_low": -11}, "lora_strength_low", "greater_than_equal", "-10"),
    ({"output": {"delivery": "s3"}}, "output.delivery", "literal_error", "auto"),
    ({"output": {"delivery": "url", "bucket": "x"}}, "output.bucket", "unknown_field", "bucket"),
    ({"output": "url"}, "output", "model_type", "object"),
    ({"frames": 81}, "frames", "unknown_field", "frames"),
    ({"image": PNG_B64}, "image", "unknown_field", "image"),
    # deprecated aliases
    ({"image_base64": ..., "image_path": "/workspace/cat.png"}, "image_path", "not_a_path", "never reads files"),
    ({"image_base64": ..., "image_path": "./cat.png"}, "image_path", "not_a_path", "path"),
    ({"image_base64": ..., "image_path": "C:\\images\\cat.png"}, "image_path", "not_a_path", "path"),
    ({"image_base64": ..., "image_path": "~/cat"}, "image_path", "not_a_path", "path"),
    ({"image_path": PNG_B64}, "image_path", "conflict", "image_base64"),
    ({"video_length": 33, "length": 33}, "video_length", "conflict", "length"),
    ({"frame_rate": 24, "fps": 24}, "frame_rate", "conflict", "fps"),
    ({"video_length": 32}, "video_length", "4k_plus_1", "4k+1"),
    ({"frame_rate": 0}, "frame_rate", "range", "between"),
]


@pytest.mark.parametrize("overrides,field,rule,word", INVALID, ids=[f"{r[1]}-{r[2]}-{i}" for i, r in enumerate(INVALID)])
def test_invalid_input_names_field_and_rule(overrides, field, rule, word):
    with pytest.raises(InvalidInput) as info:
        parse_job_input(job(**overrides))
    out = info.value.to_output()
    assert out["error_code"] == "invalid_input"
    matches = [d for d in out["details"] if d["field"] == field and d["rule"] == rule]
    assert matches, out["details"]
    assert word.lower() in matches[0]["message"].lower()
    assert field.split(".")[0] in out["error"]  # the one-line error names the field too
    json.dumps(out)  # JSON-serialisable as RunPod returns it


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(InvalidInput) as info:
        parse_job_input(job(prompt="", width=100, length=80, steps=0, colour="red"))
    fields = {d["field"] for d in info.value.to_output()["details"]}
    assert {"prompt", "width", "length", "steps", "colour"} <= fields


@pytest.mark.parametrize("raw", [None, [], "a cat", 5])
def test_input_must_be_an_object(raw):
    with pytest.raises(InvalidInput) as info:
        parse_job_input(raw)
    assert info.value.to_output()["details"][0]["field"] == "input"


def test_defaults():
    parsed = parse_job_input(job())
    inp = parsed.input
    assert (inp.length, inp.fps, inp.steps, inp.cfg, inp.shift) == (81, 16, 4, 1.0, 8.0)
    assert inp.effective_high_noise_steps() == 2
    assert (inp.lora_strength_high, inp.lora_strength_low) == (1.0, 1.0)
    assert inp.negative_prompt == DEFAULT_NEGATIVE_PROMPT and "色调艳丽" in inp.negative_prompt
    assert inp.seed is None and inp.delivery == "auto"
    assert parsed.warnings == []


def test_high_noise_steps_default_is_half_and_at_least_one():
    assert parse_job_input(job(steps=1)).input.effective_high_noise_steps() == 1
    assert parse_job_input(job(steps=7)).input.effective_high_noise_steps() == 3
    assert parse_job_input(job(steps=8, high_noise_steps=8)).input.effective_high_noise_steps() == 8


def test_prompt_is_stripped_and_max_seed_accepted():
    inp = parse_job_input(job(prompt="  a cat  ", seed=2**64 - 1)).input
    assert inp.prompt == "a cat" and inp.seed == 2**64 - 1


def test_deprecated_aliases_map_with_warnings():
    parsed = parse_job_input({"image_path": PNG_B64, "prompt": "p", "video_length": 33, "frame_rate": 24})
    inp = parsed.input
    assert inp.image_base64 == PNG_B64 and inp.image_path is None
    assert inp.length == 33 and inp.fps == 24
    assert len(parsed.warnings) == 3 and all("deprecated" in w for w in parsed.warnings)


def test_jpeg_base64_in_image_path_is_not_mistaken_for_a_path():
    jpeg_b64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHR"
    assert parse_job_input({"image_path": jpeg_b64, "prompt": "p"}).input.image_base64 == jpeg_b64


def test_data_uri_accepted():
    uri = "data:image/png;base64," + PNG_B64
    assert parse_job_input(job(image_base64=uri)).input.image_base64 == uri


@pytest.mark.parametrize("image,expected", [
    ((1920, 1080), (848, 480)),   # 16:9 at the 480p area
    ((1080, 1920), (480, 848)),
    ((512, 512), (624, 624)),
    ((100, 1000), (192, 1280)),   # extreme aspect: clamped to the bounds
])
def test_size_derived_from_image_aspect(image, expected):
    w, h = resolve_size(parse_job_input(job()).input, *image)
    assert (w, h) == expected
    assert w % 16 == 0 and h % 16 == 0 and w * h <= AREA_MAX


def test_one_side_given_other_follows_aspect():
    assert resolve_size(parse_job_input(job(width=640)).input, 1600, 900) == (640, 368)
    assert resolve_size(parse_job_input(job(height=64)).input, 200, 100) == (128, 64)
    assert resolve_size(parse_job_input(job(width=64, height=96)).input, 200, 100) == (64, 96)


def test_json_schema_lists_fields_rules_and_aliases():
    schema = input_json_schema()
    props = schema["$defs"]["JobInput"]["properties"]
    for name in ("image_url", "image_base64", "prompt", "negative_prompt", "width", "height", "length", "fps",
                 "steps", "high_noise_steps", "cfg", "shift", "seed", "lora_strength_high", "lora_strength_low",
                 "output"):
        assert name in props and props[name].get("description") or "$ref" in str(props[name]), name
    for alias in ("image_path", "video_length", "frame_rate"):
        assert props[alias]["deprecated"] is True
    assert schema["$defs"]["JobInput"]["additionalProperties"] is False
    assert schema["$defs"]["HealthAction"]["properties"]["action"]["const"] == "health"
    json.dumps(schema)
    out = output_json_schema()
    assert "video_url" in json.dumps(out)
