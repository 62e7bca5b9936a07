"""The model manifest: a TOML file naming every model file, where it comes from and what it weighs.

```toml
[presets.wan22-i2v-lightx2v]
description = "..."

[models."wan2.2_i2v_high_noise_14B_Q5_0.gguf"]   # the table key is the local file name
folder = "unet"
role = "high_noise"
source = "hf://QuantStack/Wan2.2-I2V-A14B-GGUF@main/HighNoise/Wan2.2-I2V-A14B-HighNoise-Q5_0.gguf"
mirrors = []              # optional, tried in order after `source`
size = 10000000000        # optional (unpinned entries learn it from the server)
sha256 = "..."            # optional
presets = ["wan22-i2v-lightx2v"]
config = "wan22-i2v-a14b" # optional architecture config name for the in-process engine
```

Sources may use `${VAR}` taken from the `env` mapping given to `load_manifest` (never from the
process environment directly). A variable that is not defined does not make the whole manifest
unusable (the production manifest carries the `tiny` preset whose sources name `I2V_TINY_DIR`):
the entry keeps the error and raises it, naming file, entry and field, when its source is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError, field_validator

from i2v_worker.engines.base import ModelRole
from i2v_worker.store.errors import ManifestError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PACKAGED_MANIFEST = "manifests/models.toml"

# ComfyUI folder names the store accepts -> the folder it stores them in (the store layout).
FOLDER_ALIASES: dict[str, str] = {
    "unet": "unet",
    "diffusion_models": "unet",
    "text_encoders": "text_encoders",
    "clip": "text_encoders",
    "vae": "vae",
    "loras": "loras",
    "vfi": "vfi",  # frame interpolation (RIFE), loaded by the worker itself
}
FOLDERS: tuple[str, ...] = ("unet", "text_encoders", "vae", "loras", "vfi")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _PresetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""


class _EntrySpec(BaseModel):
    """One `[models."<name>"]` table as written in the file (before expansion and cross-checks)."""

    model_config = ConfigDict(extra="forbid")
    folder: StrictStr
    role: ModelRole
    source: StrictStr
    mirrors: list[StrictStr] = []
    size: StrictInt | None = None
    sha256: StrictStr | None = None
    presets: list[StrictStr] = []
    config: StrictStr | None = None

    @field_validator("folder")
    @classmethod
    def _folder(cls, v: str) -> str:
        if v not in FOLDER_ALIASES:
            raise ValueError(f"unknown folder {v!r}; use one of {', '.join(FOLDER_ALIASES)}")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("size must be a positive number of bytes")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.lower()):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return None if v is None else v.lower()


class _ManifestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    presets: dict[str, _PresetSpec] = {}
    models: dict[str, dict] = {}


@dataclass(frozen=True)
class ModelEntry:
    """A model file the store can deliver. `folder` is canonical (aliases resolved)."""

    name: str
    folder: str
    role: ModelRole
    source: str  # expanded source URI (raw text when a variable is undefined, see `check_sources`)
    mirrors: tuple[str, ...] = ()
    size: int | None = None
    sha256: str | None = None
    presets: tuple[str, ...] = ()
    config: str | None = None
    manifest_file: str = ""
    source_error: ManifestError | None = field(default=None, compare=False, repr=False)

    @property
    def pinned(self) -> bool:
        """Size and sha256 come from the manifest (else they are learned from the server)."""
        return self.size is not None and self.sha256 is not None

    @property
    def relpath(self) -> PurePosixPath:
        return PurePosixPath(self.folder) / self.name

    def sources(self) -> list[str]:
        """The source then its mirrors, in the order to try them; raises the entry's ManifestError
        when one of them names an undefined variable."""
        if self.source_error is not None:
            raise self.source_error
        return [self.source, *self.mirrors]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str


@dataclass(frozen=True)
class Manifest:
    file: str
    entries: tuple[ModelEntry, ...]
    presets: Mapping[str, Preset]

    def get(self, name: str) -> ModelEntry:
        for e in self.entries:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.entries)
        raise ManifestError(f"no model named {name!r} (known: {known})", file=self.file, entry=name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def preset(self, name: str) -> list[ModelEntry]:
        if name not in self.presets:
            raise ManifestError(
                f"unknown preset {name!r} (known: {', '.join(self.presets) or 'none'})", file=self.file
            )
        return [e for e in self.entries if name in e.presets]

    def roles(self, preset: str) -> dict[ModelRole, ModelEntry]:
        """role -> entry for a preset (validated at load: each role exactly once)."""
        return {e.role: e for e in self.preset(preset)}


def _err(msg: str, *, file: str, entry: str | None = None, field: str | None = None) -> ManifestError:
    """A ManifestError; a top-level `field` (no entry) is named as `file: field: msg`."""
    if entry is None and field:
        err = ManifestError(f"{field}: {msg}", file=file)
        err.field = field
        return err
    return ManifestError(msg, file=file, entry=entry, field=field)


def _expand(text: str, env: Mapping[str, str], *, file: str, entry: str, fld: str) -> str:
    missing = [m.group(1) for m in _VAR.finditer(text) if m.group(1) not in env]
    if missing:
        raise ManifestError(
            f"variable ${{{missing[0]}}} is not defined (set it in the environment, e.g. "
            f"{missing[0]}=/path)",
            file=file, entry=entry, field=fld,
        )
    return _VAR.sub(lambda m: env[m.group(1)], text)


def _check_uri(uri: str, *, file: str, entry: str, fld: str) -> None:
    from i2v_worker.store.sources import parse_source  # the transfer side owns URI syntax

    try:
        parse_source(uri)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a manifest error for this field
        raise ManifestError(f"bad source URI {uri!r}: {exc}", file=file, entry=entry, field=fld) from None


# File names are limited to 255 bytes (NAME_MAX); the store derives longer ones from a model name
# (`.<name>.<writer id up to 55 chars>.part.json.tmp`, lease claims, record temps), so the name
# itself must leave room for those: 160 bytes of UTF-8 leaves 95 for the longest suffix.
MAX_NAME_BYTES = 160


def _check_name(name: str, *, file: str) -> None:
    p = PurePosixPath(name)
    if (
        not name
        or name != name.strip()
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or name.startswith(".")
        or p.is_absolute()
        or "\x00" in name
    ):
        raise ManifestError(
            "the model name is its local file name: a plain file name, no path separators, not "
            "starting with '.'",
            file=file, entry=name, field="name",
        )
    n = len(name.encode("utf-8"))
    if n > MAX_NAME_BYTES:
        raise ManifestError(
            f"the model name is {n} bytes long; at most {MAX_NAME_BYTES} bytes are allowed (the store "
            "adds a writer id and suffixes to it for its temp files, and a file name can have at most "
            "255 bytes): use a shorter local name",
            file=file, entry=name, field="name",
        )


def parse_manifest(text: str, *, file: str, env: Mapping[str, str] | None = None) -> Manifest:
    env = dict(env or {})
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        dup = re.search(r"Cannot declare \('models', '([^']+)'\) twice", str(exc))
        if dup:
            raise ManifestError(f"duplicate model name ({exc})", file=file, entry=dup.group(1), field="name") from None
        raise ManifestError(f"not valid TOML: {exc}", file=file) from None
    try:
        spec = _ManifestSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(x) for x in err["loc"]]
        if loc[0] == "models" and len(loc) > 1:
            entry, fld = loc[1], ".".join(loc[2:]) or None
        else:
            entry, fld = None, ".".join(loc)
        msg = f"unknown field {loc[-1]!r}" if err["type"] == "extra_forbidden" else err["msg"]
        raise _err(msg, file=file, entry=entry, field=fld) from None

    presets = {n: Preset(n, p.description) for n, p in spec.presets.items()}
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for name, table in spec.models.items():
        _check_name(name, file=file)
        if name in seen:  # TOML itself rejects duplicate keys; kept for manifests built in code
            raise ManifestError("duplicate model name", file=file, entry=name, field="name")
        seen.add(name)
        if not isinstance(table, dict):
            raise ManifestError("must be a table", file=file, entry=name)
        try:
            e = _EntrySpec.model_validate(table)
        except ValidationError as exc:
            err = exc.errors()[0]
            fld = ".".join(str(x) for x in err["loc"]) or None
            if err["type"] == "extra_forbidden":
                raise ManifestError(f"unknown field {fld!r}", file=file, entry=name, field=fld) from None
            if err["type"] == "missing":
                raise ManifestError("required field is missing", file=file, entry=name, field=fld) from None
            if err["type"] == "enum":
                allowed = ", ".join(r.value for r in ModelRole)
                raise ManifestError(f"unknown role {table.get('role')!r}; use one of {allowed}",
                                    file=file, entry=name, field=fld) from None
            raise ManifestError(err["msg"].removeprefix("Value error, "), file=file, entry=name, field=fld) from None
        for p in e.presets:
            if p not in presets:
                raise ManifestError(
                    f"unknown preset {p!r} (declare it as [presets.{p}])", file=file, entry=name, field="presets"
                )
        source, mirrors, source_error = e.source, list(e.mirrors), None
        try:
            source = _expand(e.source, env, file=file, entry=name, fld="source")
            _check_uri(source, file=file, entry=name, fld="source")
            for i, m in enumerate(e.mirrors):
                mirrors[i] = _expand(m, env, file=file, entry=name, fld=f"mirrors[{i}]")
                _check_uri(mirrors[i], file=file, entry=name, fld=f"mirrors[{i}]")
        except ManifestError as exc:
            if not _VAR.search(e.source + "".join(e.mirrors)) or "is not defined" not in str(exc):
                raise
            source_error = exc  # undefined variable: raised when this entry's source is needed
        entries.append(
            ModelEntry(
                name=name, folder=FOLDER_ALIASES[e.folder], role=e.role, source=source,
                mirrors=tuple(mirrors), size=e.size, sha256=e.sha256, presets=tuple(e.presets),
                config=e.config, manifest_file=file, source_error=source_error,
            )
        )

    for pname in presets:
        by_role: dict[ModelRole, str] = {}
        for entry in entries:
            if pname not in entry.presets:
                continue
            if entry.role in by_role:
                raise ManifestError(
                    f"preset {pname!r} has two {entry.role.value} models ({by_role[entry.role]!r} and "
                    f"{entry.name!r}); each role once per preset",
                    file=file, entry=entry.name, field="role",
                )
            by_role[entry.role] = entry.name
        missing = [r.value for r in ModelRole if r not in by_role]
        if missing:
            raise _err(
                f"preset {pname!r} has no model for role(s) {', '.join(missing)}; each of "
                f"{', '.join(r.value for r in ModelRole)} needs one entry",
                file=file, field=f"presets.{pname}",
            )
    return Manifest(file=file, entries=tuple(entries), presets=presets)


def load_manifest(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Manifest:
    """Load and validate a manifest file (default: the packaged production manifest)."""
    if path is None:
        from importlib.resources import files

        res = files("i2v_worker.store").joinpath(PACKAGED_MANIFEST)
        return parse_manifest(res.read_text(encoding="utf-8"), file=str(res), env=env)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", file=str(path)) from None
    return parse_manifest(text, file=str(path), env=env)
