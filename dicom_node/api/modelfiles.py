"""Model folders on disk for the admin endpoints: validate, write atomically, patch, remove.

An upload is validated with the spec loader's model (:class:`inference.spec.ModelSpec`)
before anything is written; the files are then written into a fresh folder under
``<models_dir>/.tmp/`` (one level deeper than the store scans, so a half-written
upload is never seen) and renamed into ``<models_dir>/<name>/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tomllib
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from dicom_node.api.errors import ApiError
from inference.spec import ModelSpec
from inference.store import SPEC_FILE

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Extra files an upload may carry besides the spec and the ONNX file.
PLAN_FILE = "model.plan"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def check_name(name: str) -> str:
    """Return ``name`` when it is a valid model folder name, else raise 400."""
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ApiError(400, "invalid_name", "model names are [a-z0-9][a-z0-9._-]{0,63}")
    return name


def validate_spec(data: dict[str, Any], name: str) -> ModelSpec:
    """Validate spec ``data`` for model ``name`` (400 naming the bad key)."""
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ApiError(400, "invalid_spec", f"{key}: {first['msg'].removeprefix('Value error, ')}") from exc
    if spec.name != name:
        raise ApiError(400, "invalid_spec", f"name: {spec.name!r} does not match the path's {name!r}")
    return spec


def parse_toml(raw: bytes) -> dict[str, Any]:
    """Parse an uploaded ``model.toml`` (400 when it is not UTF-8 TOML)."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ApiError(400, "invalid_spec", f"model.toml is not valid UTF-8 TOML: {exc}") from exc


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise ValueError(f"cannot write a {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def dump_toml(data: dict[str, Any]) -> str:
    """Serialise a spec as TOML: one ``key = value`` line per top-level key (tables inline).

    Comments of the original file are not kept. The output parses back to ``data``
    (``None`` values are dropped: TOML has no null).
    """
    lines = ["# written by dicom-node (PATCH /admin/models); comments of the original are not kept"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in data.items() if v is not None]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != _without_none(data):
        raise ApiError(400, "invalid_spec", "the patched spec cannot be written as TOML faithfully")
    return text


def _without_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list | tuple):
        return [_without_none(v) for v in data]
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7396): objects merge recursively, ``null`` removes a key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _copy(src: BinaryIO, dest: Path) -> int:
    written = 0
    with open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            out.write(chunk)
            written += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return written


def install(models_dir: Path, name: str, spec_text: bytes, files: Iterable[tuple[str, BinaryIO]]) -> Path:
    """Write a model folder atomically: temp folder, fsync, rename over any previous version.

    Parameters
    ----------
    models_dir : pathlib.Path
        ``[inference] models_dir``.
    name : str
        The validated model name (folder name).
    spec_text : bytes
        The validated ``model.toml``.
    files : iterable of (str, file)
        Other files by their (validated) file names.
    """
    staging = models_dir / ".tmp"
    staging.mkdir(parents=True, exist_ok=True)
    temp = staging / uuid.uuid4().hex
    temp.mkdir()
    try:
        for filename, fh in files:
            if _copy(fh, temp / filename) == 0:
                raise ApiError(400, "invalid_upload", f"{filename} is empty")
        (temp / SPEC_FILE).write_bytes(spec_text)
        final = models_dir / name
        old = staging / f"old-{uuid.uuid4().hex}"
        if final.exists():
            final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    log.info("model installed model=%s", name)
    return final


def write_spec(directory: Path, text: str) -> None:
    """Replace ``<directory>/model.toml`` atomically."""
    write_file(directory, SPEC_FILE, text.encode("utf-8"))


def write_file(directory: Path, filename: str, data: bytes) -> None:
    """Replace ``<directory>/<filename>`` atomically (temp file, fsync, rename); ``filename`` is the caller's constant."""
    temp = directory / f".{filename}.{uuid.uuid4().hex}"
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, directory / filename)


def remove(models_dir: Path, name: str) -> bool:
    """Move the model folder aside (atomic) and delete it; False when there was none."""
    final = models_dir / name
    if not final.is_dir():
        return False
    staging = models_dir / ".tmp"
    staging.mkdir(parents=True, exist_ok=True)
    gone = staging / f"deleted-{uuid.uuid4().hex}"
    final.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    log.info("model removed model=%s", name)
    return True
