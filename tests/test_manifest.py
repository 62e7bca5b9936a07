"""The manifest: what the store may deliver. Errors name file, entry and field; the packaged
production manifest carries exactly the five files of the notes (models.md) with their pins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from i2v_worker.engines.base import ModelRole
from i2v_worker.store import ManifestError, load_manifest
from i2v_worker.store.manifest import parse_manifest

pytestmark = pytest.mark.timeout(60)

PRESETS = """
[presets.p]
description = "test preset"
"""


def _entry(name: str, role: str, **fields) -> str:
    fields.setdefault("folder", "unet")
    fields.setdefault("source", f"https://example.invalid/{name}")
    fields.setdefault("presets", ["p"])
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in fields.items())
    return f'\n[models."{name}"]\nrole = "{role}"\n{body}\n'


def _toml(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _full_preset(**override) -> str:
    """A valid preset: one entry per role; `override` maps role -> extra fields."""
    roles = {"high_noise": ("hi.gguf", "unet"), "low_noise": ("lo.gguf", "unet"),
             "text_encoder": ("te.safetensors", "text_encoders"), "vae": ("vae.safetensors", "vae"),
             "lora": ("lora.safetensors", "loras"), "interpolation": ("rife.pth", "vfi")}
    out = PRESETS
    for role, (name, folder) in roles.items():
        fields = {"folder": folder, **override.get(role, {})}
        name = fields.pop("name", name)
        out += _entry(name, role, **fields)
    return out


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(textwrap.dedent(text))
    return p


def _error(tmp_path: Path, text: str, env=None) -> ManifestError:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, env=env or {})
    err = info.value
    assert err.file == str(path)
    assert str(path) in str(err)
    return err


def test_valid_manifest_maps_roles_and_aliases(tmp_path):
    m = load_manifest(_write(tmp_path, _full_preset(high_noise={"folder": "diffusion_models"},
                                                  text_encoder={"folder": "clip"})))
    roles = m.roles("p")
    assert set(roles) == set(ModelRole)
    assert roles[ModelRole.HIGH_NOISE].folder == "unet"  # alias -> canonical folder
    assert roles[ModelRole.TEXT_ENCODER].folder == "text_encoders"
    assert [e.name for e in m.preset("p")] == ["hi.gguf", "lo.gguf", "te.safetensors", "vae.safetensors",
                                               "lora.safetensors", "rife.pth"]
    assert m.get("vae.safetensors").role is ModelRole.VAE
    assert not m.get("vae.safetensors").pinned


def test_unknown_field_names_entry_and_field(tmp_path):
    err = _error(tmp_path, _full_preset(vae={"checksum": "x"}))
    assert (err.entry, err.field) == ("vae.safetensors", "checksum")
    assert "unknown field" in str(err) and "vae.safetensors" in str(err)


def test_unknown_top_level_field(tmp_path):
    err = _error(tmp_path, "colour = 'blue'\n" + _full_preset())
    assert err.entry is None and err.field == "colour"


def test_bad_source_uri(tmp_path):
    err = _error(tmp_path, _full_preset(lora={"source": "ftp://example.invalid/x"}))
    assert (err.entry, err.field) == ("lora.safetensors", "source")


def test_bad_mirror_uri(tmp_path):
    err = _error(tmp_path, _full_preset(lora={"mirrors": ["https://ok.invalid/x", "hf://no-revision"]}))
    assert (err.entry, err.field) == ("lora.safetensors", "mirrors[1]")


def test_duplicate_name_is_rejected(tmp_path):
    text = _full_preset() + _entry("vae.safetensors", "vae", folder="vae")
    err = _error(tmp_path, text)
    assert (err.entry, err.field) == ("vae.safetensors", "name") and "duplicate" in str(err)


@pytest.mark.parametrize("bad", ["../escape.bin", "/abs.bin", "sub/dir.bin", ".hidden"])
def test_name_escaping_the_store(tmp_path, bad):
    err = _error(tmp_path, _full_preset(vae={"name": bad}))
    assert err.entry == bad and err.field == "name"


def test_unknown_folder(tmp_path):
    err = _error(tmp_path, _full_preset(vae={"folder": "../vae"}))
    assert (err.entry, err.field) == ("vae.safetensors", "folder")
    assert "unknown folder" in str(err)


def test_unknown_role(tmp_path):
    text = PRESETS + _entry("x.bin", "refiner")
    err = _error(tmp_path, text)
    assert (err.entry, err.field) == ("x.bin", "role")
    assert "high_noise" in str(err)  # says what is allowed


def test_unknown_preset(tmp_path):
    err = _error(tmp_path, _full_preset(vae={"presets": ["p", "nope"]}))
    assert (err.entry, err.field) == ("vae.safetensors", "presets")


@pytest.mark.parametrize("sha", ["abc", "z" * 64, "0" * 63])
def test_bad_sha256(tmp_path, sha):
    err = _error(tmp_path, _full_preset(vae={"sha256": sha, "size": 10}))
    assert (err.entry, err.field) == ("vae.safetensors", "sha256")


def test_bad_size(tmp_path):
    err = _error(tmp_path, _full_preset(vae={"size": -1}))
    assert (err.entry, err.field) == ("vae.safetensors", "size")


def test_missing_required_field(tmp_path):
    text = PRESETS + '\n[models."x.bin"]\nrole = "vae"\nfolder = "vae"\npresets = ["p"]\n'
    err = _error(tmp_path, text)
    assert (err.entry, err.field) == ("x.bin", "source")


def test_preset_missing_a_role(tmp_path):
    text = PRESETS + "".join(_entry(f"{r}.bin", r) for r in ("high_noise", "low_noise", "vae", "lora"))
    err = _error(tmp_path, text)
    assert err.field == "presets.p" and "text_encoder" in str(err)


def test_preset_with_a_role_twice(tmp_path):
    err = _error(tmp_path, _full_preset() + _entry("vae2.safetensors", "vae", folder="vae"))
    assert (err.entry, err.field) == ("vae2.safetensors", "role")


def test_not_toml(tmp_path):
    err = _error(tmp_path, "[models\n")
    assert "TOML" in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


def test_variables_expand_from_the_given_env(tmp_path):
    text = _full_preset(vae={"source": "file://${MY_DIR}/vae.safetensors"})
    m = load_manifest(_write(tmp_path, text), env={"MY_DIR": "/data/tiny"})
    assert m.get("vae.safetensors").sources() == ["file:///data/tiny/vae.safetensors"]


def test_undefined_variable_is_an_error_for_that_entry_when_used(tmp_path):
    text = _full_preset(vae={"source": "file://${MY_DIR}/vae.safetensors"})
    m = load_manifest(_write(tmp_path, text), env={})  # the rest of the manifest stays usable
    assert m.get("hi.gguf").sources() == ["https://example.invalid/hi.gguf"]
    with pytest.raises(ManifestError) as info:
        m.get("vae.safetensors").sources()
    err = info.value
    assert (err.entry, err.field) == ("vae.safetensors", "source") and "MY_DIR" in str(err)


def test_unknown_model_and_preset_lookups(tmp_path):
    m = load_manifest(_write(tmp_path, _full_preset()))
    with pytest.raises(ManifestError, match="no model named 'x'"):
        m.get("x")
    with pytest.raises(ManifestError, match="unknown preset 'nope'"):
        m.preset("nope")


# --- the packaged manifest --------------------------------------------------------------------------

NOTES_TABLE = {  # models.md, exactly
    "wan2.2_i2v_high_noise_14B_Q5_0.gguf": ("unet", "hf://QuantStack/Wan2.2-I2V-A14B-GGUF@main/HighNoise/Wan2.2-I2V-A14B-HighNoise-Q5_0.gguf", None, None),
    "wan2.2_i2v_low_noise_14B_Q5_0.gguf": ("unet", "hf://QuantStack/Wan2.2-I2V-A14B-GGUF@main/LowNoise/Wan2.2-I2V-A14B-LowNoise-Q5_0.gguf", None, None),
    "wan_2.1_vae.safetensors": ("vae", "hf://Comfy-Org/Wan_2.1_ComfyUI_repackaged@617a7633e636506f850e043bc4605f290a466a8e/split_files/vae/wan_2.1_vae.safetensors",
                                253815318, "2fc39d31359a4b0a64f55876d8ff7fa8d780956ae2cb13463b0223e15148976b"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "hf://Comfy-Org/Wan_2.1_ComfyUI_repackaged@617a7633e636506f850e043bc4605f290a466a8e/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                               6735906897, "c3355d30191f1f066b26d93fba017ae9809dce6c627dda5f6a66eaa651204f68"),
    "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors": ("loras", "hf://Kijai/WanVideo_comfy@8260d429d19fd7a72304cad059160b95d843913f/Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
                                                                        738005744, "85c4a61c30e0497aa44b91d93a893b624708461a56fe5485183b28fa07e2dfb3"),
    # cccv 0.1.0's pin (config/vfi/rife_config.py) and model zoo URL; size unpinned (cccv has none)
    "RIFE_IFNet_v426_heavy.pth": ("vfi", "https://github.com/EutropicAI/cccv/releases/download/model_zoo/RIFE_IFNet_v426_heavy.pth",
                                  None, "4cc518e172156ad6207b9c7a43364f518832d83a4325d484240493a9e2980537"),
}


def test_production_manifest_matches_the_notes():
    m = load_manifest(None, env={})
    prod = m.preset("wan22-i2v-lightx2v")
    assert len(prod) == 6
    for e in prod:
        folder, source, size, sha = NOTES_TABLE[e.name]
        assert (e.folder, e.source, e.size, e.sha256) == (folder, source, size, sha), e.name
        assert e.pinned == (size is not None and sha is not None)
    roles = m.roles("wan22-i2v-lightx2v")
    assert roles[ModelRole.HIGH_NOISE].name == "wan2.2_i2v_high_noise_14B_Q5_0.gguf"
    assert roles[ModelRole.LOW_NOISE].name == "wan2.2_i2v_low_noise_14B_Q5_0.gguf"
    assert roles[ModelRole.HIGH_NOISE].config == "wan22-i2v-a14b"


def test_tiny_preset_reads_its_folder_from_the_environment(tmp_path):
    m = load_manifest(None, env={"I2V_TINY_DIR": str(tmp_path)})
    tiny = m.roles("tiny")
    assert set(tiny) == set(ModelRole)
    assert {e.name for e in tiny.values()} == {
        "tiny_wan2.2_i2v_high_noise_Q5_0.gguf", "tiny_wan2.2_i2v_low_noise_Q5_0.gguf",
        "tiny_umt5_xxl_fp8_e4m3fn_scaled.safetensors", "tiny_wan_2.1_vae.safetensors",
        "tiny_lightx2v_lora.safetensors", "tiny_rife_ifnet_v426_heavy.pth"}
    for e in tiny.values():
        assert e.sources() == [f"file://{tmp_path}/{e.name}"] and not e.pinned
    assert tiny[ModelRole.HIGH_NOISE].config == "tiny" and tiny[ModelRole.LOW_NOISE].config == "tiny"


def test_parse_manifest_from_text_names_the_given_file():
    with pytest.raises(ManifestError) as info:
        parse_manifest("[presets.p]\nbogus = 1\n", file="inline.toml")
    assert info.value.file == "inline.toml" and info.value.field == "presets.p.bogus"


def test_name_too_long_for_the_stores_temp_files_is_rejected(tmp_path):
    """Item 10: a 250-character name passed the manifest and failed at fetch with ENAMETOOLONG."""
    bad = "m" * 246 + ".bin"
    err = _error(tmp_path, _full_preset(vae={"name": bad}))
    assert err.entry == bad and err.field == "name"
    assert "250 bytes" in str(err) and "160" in str(err) and "shorter" in str(err)


def test_name_of_the_longest_allowed_length_works_in_the_store(tmp_path):
    from i2v_worker.store import disk
    from i2v_worker.store.manifest import MAX_NAME_BYTES

    name = "n" * (MAX_NAME_BYTES - 4) + ".bin"
    writer = disk.new_writer_id().split("-")[0] + "x" * 40 + "-4194304-abcdef"
    longest = disk.part_name(name, writer[-55:]) + ".json.tmp"
    (tmp_path / longest).write_bytes(b"")  # no ENAMETOOLONG
