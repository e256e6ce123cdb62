"""A model's input contract: what an instance and a series must be for the model to run.

A contract is a frozen dataclass with a TOML form (see ``contracts/*.toml``,
shipped as package data); model specs embed the same table under ``[input]``.
Attribute names are DICOM keywords (PS3.6), so every rule names the exact tag.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_dict

from dicom_node.errors import ConfigError


@dataclass(frozen=True)
class GeometryRules:
    """Volume rules for a series (PS3.3 C.7.6.2 Image Plane Module)."""

    #: The series must form one regular volume (positions, orientation, sizes, spacing).
    volume: bool = False
    #: Allowed relative deviation of a slice step from the median step.
    spacing_tolerance: float = 0.01
    #: When set, the slice normal must lie within this many degrees of the patient axis ("axial": S-I).
    orientation: str = ""
    max_obliquity_deg: float = 5.0


@dataclass(frozen=True)
class Contract:
    """Accepted input of one model.

    Empty tuples mean "any". ``required_any`` lists alternatives, each a group of
    keywords that must all be present: ``[["ModalityLUTSequence"], ["WindowCenter",
    "WindowWidth"]]`` means a Modality LUT or else a window (PS3.3 C.11.1, C.11.2).
    """

    name: str
    description: str = ""
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    transfer_syntaxes: tuple[str, ...] = ()
    required_tags: tuple[str, ...] = ()
    required_any: tuple[tuple[str, ...], ...] = ()
    photometric_interpretations: tuple[str, ...] = ()
    samples_per_pixel: tuple[int, ...] = ()
    bits_allocated: tuple[int, ...] = ()
    bits_stored: tuple[int, ...] = ()
    min_slices: int = 1
    geometry: GeometryRules = field(default_factory=GeometryRules)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "contract") -> Contract:
        """Build and validate a contract from its TOML table.

        Raises
        ------
        ConfigError
            Naming the bad key: unknown keys, unknown DICOM keywords, wrong types.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
        if not isinstance(data.get("name"), str) or not data["name"]:
            raise ConfigError(f"{source}: name: a non-empty string is required")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "geometry":
                kwargs[key] = _geometry(value, source)
            elif key == "required_any":
                kwargs[key] = tuple(tuple(_keywords(g, f"{source}: required_any")) for g in value)
            elif key == "required_tags":
                kwargs[key] = tuple(_keywords(value, f"{source}: required_tags"))
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The TOML-ready table of this contract."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, GeometryRules):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


def _keywords(values: Any, where: str) -> list[str]:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: a list of DICOM keywords is required")
    bad = [v for v in values if v not in keyword_dict and v != "TransferSyntaxUID"]
    if bad:
        raise ConfigError(f"{where}: unknown DICOM keyword(s) {', '.join(map(str, bad))}")
    return list(values)


def _geometry(value: Any, source: str) -> GeometryRules:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: geometry: a table is required")
    known = {f.name for f in fields(GeometryRules)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{source}: geometry: unknown key(s) {', '.join(unknown)}")
    return GeometryRules(**value)


def builtin_contracts() -> list[str]:
    """Names of the contracts shipped with dicom-node."""
    folder = resources.files("dicom_node.validation") / "contracts"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_contract(name_or_path: str | Path) -> Contract:
    """Load a contract by built-in name (``cxr-foundation``, ``ct-volume``) or TOML path.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A built-in name or a path to a ``.toml`` file.

    Returns
    -------
    Contract

    Raises
    ------
    ConfigError
        Unknown name, unreadable file, or an invalid contract (naming the key).
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"contract {path}: cannot read: {exc}") from exc
        source = str(path)
    else:
        resource = resources.files("dicom_node.validation") / "contracts" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ConfigError(f"unknown contract {name_or_path!r}; built-in: {', '.join(builtin_contracts())}")
        text = resource.read_text(encoding="utf-8")
        source = f"contract {name_or_path}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return Contract.from_dict(data, source=source)
