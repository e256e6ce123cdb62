"""Lazy backend registry, after pydicom's pixel decoder registry.

Each backend is named by an import path; its module is imported only when it is
asked about, and the module itself imports its runtime only inside functions.
Backend choice: the spec's preference, then the node config's order, then any
other backend, first available wins; the reasons the others were passed over
are kept for ``dicom-node models list``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from inference.backends.base import Backend, BackendOptions
from inference.errors import BackendUnavailableError
from inference.spec import BACKEND_NAMES, ModelSpec
from inference.store import ModelEntry

__all__ = ["Backend", "BackendOptions", "Selection", "availability", "candidate_order", "load_backend", "select_backend"]

#: Backend name -> module implementing ``is_available`` and ``load``.
REGISTRY: dict[str, str] = {
    "tensorrt": "inference.backends.tensorrt",
    "onnxruntime": "inference.backends.onnxruntime",
    "triton": "inference.backends.triton",
}


@dataclass(frozen=True)
class Selection:
    """The backend chosen for a model and why each other candidate was not."""

    name: str | None
    detail: str
    passed_over: dict[str, str] = field(default_factory=dict)


def _module(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r} (known: {', '.join(REGISTRY)})")
    return importlib.import_module(REGISTRY[name])


def availability(name: str, options: BackendOptions) -> tuple[bool, str]:
    """Return ``(available, reason)`` for backend ``name`` without loading any model."""
    return _module(name).is_available(options)


def candidate_order(spec: ModelSpec, config_order: list[str]) -> list[str]:
    """Spec preference, then the config's order, then the remaining backends; no repeats."""
    order: list[str] = []
    for name in [*spec.backends, *config_order, *BACKEND_NAMES]:
        if name not in order:
            order.append(name)
    return order


def select_backend(spec: ModelSpec, config_order: list[str], options: BackendOptions) -> Selection:
    """Pick the first available backend in :func:`candidate_order`.

    Returns
    -------
    Selection
        ``name`` is None when no backend is available; ``passed_over`` maps
        each skipped backend to its reason.
    """
    passed: dict[str, str] = {}
    chosen: tuple[str, str] | None = None
    for name in candidate_order(spec, config_order):
        ok, reason = availability(name, options)
        if ok and chosen is None:
            chosen = (name, reason)
        elif not ok:
            passed[name] = reason
    if chosen is None:
        return Selection(None, "no backend available", passed)
    return Selection(chosen[0], chosen[1], passed)


def load_backend(name: str, entry: ModelEntry, options: BackendOptions) -> Backend:
    """Open ``entry`` on backend ``name``.

    Raises
    ------
    BackendUnavailableError
        The backend cannot run here; the message names what is missing.
    inference.errors.BackendError
        The backend is present but failed to load the model.
    """
    ok, reason = availability(name, options)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return _module(name).load(entry, options)
