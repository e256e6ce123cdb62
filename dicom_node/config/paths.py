"""Relative paths in a config file resolve against the file's folder, not the working directory.

The TOML value is walked alongside the declared pydantic type of the key it was read for, so
only values declared as paths change; see :func:`rebase_table`.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Annotated, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel


def _unwrap(annotation: object) -> object:
    """Strip ``Annotated[...]`` metadata (discriminators, constraints) from a type."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_path_type(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, PurePath)


def _is_model(annotation: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_types(model: type[BaseModel]) -> dict[str, object]:
    """Field annotations of ``model`` keyed by every name a TOML table may use (name and alias)."""
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        for key in (name, field.alias, field.validation_alias):
            if isinstance(key, str):
                out[key] = field.annotation
    return out


def _matches(model: type[BaseModel], table: Mapping[str, object]) -> bool:
    """True unless a ``Literal`` field of ``model`` (a discriminator) rules the table out."""
    for key, annotation in _field_types(model).items():
        annotation = _unwrap(annotation)
        if get_origin(annotation) is Literal and key in table and table[key] not in get_args(annotation):
            return False
    return True


def rebase_table(table: Mapping[str, object], models: list[type[BaseModel]], base: Path) -> dict[str, object]:
    """Rebase the path-valued keys of one TOML table read for one of ``models``."""
    candidates = [m for m in models if _matches(m, table)] or models
    out: dict[str, object] = {}
    for key, value in table.items():
        annotation = next((_field_types(m)[key] for m in candidates if key in _field_types(m)), None)
        out[key] = value if annotation is None else _rebase(value, annotation, base)
    return out


def _rebase(value: object, annotation: object, base: Path) -> object:
    """Resolve the relative paths in ``value`` (read from a file) against ``base``.

    Walks the value alongside the declared type of the key it was read for:
    models, lists, mappings and unions (a discriminated union picks its member
    by the ``Literal`` discriminator in the table). Anything that is not a
    relative path string where a path is declared comes back unchanged, so
    validation still reports bad values in the user's own words.
    """
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
        models = [m for m in members if _is_model(m)]
        if isinstance(value, Mapping) and models:
            return rebase_table(value, models, base)
        if isinstance(value, str) and any(_is_path_type(m) for m in members):
            return _rebase(value, Path, base)
        return _rebase(value, members[0], base) if len(members) == 1 else value
    if _is_path_type(annotation):
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return os.path.normpath(base / value)  # "../var" next to conf/ reads as <checkout>/var
        return value
    if _is_model(annotation) and isinstance(value, Mapping):
        return rebase_table(value, [annotation], base)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list) and get_args(annotation):
        return [_rebase(item, get_args(annotation)[0], base) for item in value]
    if origin in (dict, Mapping) and isinstance(value, Mapping) and len(get_args(annotation)) == 2:
        return {k: _rebase(v, get_args(annotation)[1], base) for k, v in value.items()}
    return value
