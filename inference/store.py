"""The model store: every ``<dir>/<name>/model.toml`` under one or more roots.

A broken spec is logged and recorded in :attr:`ModelStore.errors`; it never
stops the other models from loading (one bad upload must not take the node's
other models down).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from inference.errors import ModelNotFoundError, SpecError
from inference.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)

SPEC_FILE = "model.toml"


@dataclass(frozen=True)
class ModelEntry:
    """A loaded spec and where its files live.

    An entry is a snapshot: the ONNX digest is read once, on first use, and
    kept for the entry's life. A changed model is a new entry (the store is
    read again and the pipeline drops the predictor that held the old one), so
    a result's recorded digest is that of the file its predictor loaded.
    """

    spec: ModelSpec
    directory: Path

    @property
    def onnx_path(self) -> Path:
        """The ONNX file the spec names, relative to the model folder."""
        return self.directory / self.spec.onnx

    def onnx_sha256(self) -> str:
        """SHA-256 of the ONNX file as 64 lower-case hex digits.

        Part of the TensorRT plan cache key and the provenance recorded in every
        result object. Computed once per entry: hashing reads the whole file,
        and the job path asks for it once per job.
        """
        return self._onnx_digest

    @cached_property
    def _onnx_digest(self) -> str:
        # cached_property writes the instance __dict__ directly, so it works on a
        # frozen dataclass; two threads racing here compute the same value.
        digest = hashlib.sha256()
        with self.onnx_path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


class ModelStore:
    """Specs found under the given roots, loaded and validated once.

    Parameters
    ----------
    roots : iterable of pathlib.Path
        Folders whose sub-folders each hold one ``model.toml``. A missing root
        is logged and skipped.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self._entries: dict[str, ModelEntry] = {}
        #: Spec file -> error message, for every spec that failed to load.
        self.errors: dict[Path, str] = {}
        for root in roots:
            self._scan(Path(root))
        self._warn_shared_series_numbers()

    def _scan(self, root: Path) -> None:
        if not root.is_dir():
            log.warning("model store root missing root=%s", root)
            return
        for spec_path in sorted(root.glob(f"*/{SPEC_FILE}")):
            try:
                entry = _load_entry(spec_path)
            except SpecError as exc:
                log.error("model spec rejected file=%s error=%s", spec_path, exc)
                self.errors[spec_path] = str(exc)
                continue
            if entry.spec.name in self._entries:
                msg = f"{spec_path}: name: model {entry.spec.name!r} is already defined in {self._entries[entry.spec.name].directory}"
                log.error("model spec rejected file=%s error=%s", spec_path, msg)
                self.errors[spec_path] = msg
                continue
            self._entries[entry.spec.name] = entry

    def _warn_shared_series_numbers(self) -> None:
        """Log models whose result series would share a Series Number (a PACS could not tell them apart)."""
        owner: dict[int, str] = {}
        for name in sorted(self._entries):
            spec = self._entries[name].spec
            if spec.task == "embedding":
                continue  # writes no DICOM result object
            seg = spec.result_series_number
            for number in (seg, seg + 1):
                other = owner.setdefault(number, name)
                if other != name:
                    log.warning("models share a result Series Number model=%s other=%s number=%d; "
                                "set series_number in one model.toml", name, other, number)
                    break

    def names(self, include_hidden: bool = False) -> list[str]:
        """Names of the loaded models, sorted; hidden (test) models only on request."""
        return sorted(n for n, e in self._entries.items() if include_hidden or not e.spec.hidden)

    def get(self, name: str) -> ModelEntry:
        """Return the entry of model ``name``.

        Raises
        ------
        ModelNotFoundError
            No valid model of that name; the message says when its spec was rejected.
        """
        try:
            return self._entries[name]
        except KeyError:
            rejected = [msg for path, msg in self.errors.items() if path.parent.name == name]
            detail = f"; its spec was rejected: {rejected[0]}" if rejected else ""
            raise ModelNotFoundError(f"no model named {name!r}{detail}") from None


def _load_entry(spec_path: Path) -> ModelEntry:
    spec = load_spec(spec_path)
    if spec.name != spec_path.parent.name:
        raise SpecError(f"{spec_path}: name: {spec.name!r} does not match its folder {spec_path.parent.name!r}")
    entry = ModelEntry(spec=spec, directory=spec_path.parent)
    if not entry.onnx_path.is_file():
        raise SpecError(f"{spec_path}: onnx: file {entry.onnx_path.name!r} not found in {spec_path.parent}")
    return entry
