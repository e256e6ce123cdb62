"""The model registry: the node's one model store and one predictor per model.

Jobs, the contract check of routing, ``/readyz``, the REST model routes and the
predict/invocation routes all ask this object for a model. It scans
``[inference] models_dir`` once and keeps the validated store; it scans again
only when the admin routes change a model (:meth:`ModelRegistry.reload`,
:meth:`ModelRegistry.forget`) or when a file under ``models_dir`` changes on disk
(a cheap ``stat`` fingerprint, so an operator copying a model folder in is still
seen by the next job, as before). Before this, every job, every contract check and
every ``/readyz`` re-read and re-validated every ``model.toml``.

Predictors are cached here too (they were on ``jobs.pipeline.Pipeline``): jobs and
REST callers share one predictor per model, so their work fills the same
micro-batcher.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.config import InferenceConfig
from dicom_node.errors import ModelError
from inference.backends import BackendOptions, Selection, select_backend
from inference.errors import InferenceError
from inference.spec import ModelSpec
from inference.store import ModelEntry, ModelStore

if TYPE_CHECKING:
    from inference.predictor import Predictor

log = logging.getLogger(__name__)

#: (name, mtime_ns, size) of every entry of models_dir and of every file one level below.
Fingerprint = tuple[tuple[str, int, int], ...]


def backend_options(config: InferenceConfig) -> BackendOptions:
    """The backend settings of the node's ``[inference]`` section."""
    return BackendOptions(onnxruntime_threads=config.onnxruntime_threads, triton_url=config.triton_url,
                          triton_urls=tuple(config.triton_urls), triton_health_interval_s=config.triton_health_interval_s,
                          triton_probe_timeout_s=config.triton_probe_timeout_s)


def _fingerprint(root: Path) -> Fingerprint:
    """What changes when a model folder or one of its files is added, replaced or removed."""
    found: list[tuple[str, int, int]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        try:
            st = entry.stat()
            found.append((entry.name, st.st_mtime_ns, st.st_size))
            if entry.is_dir():
                for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    sst = sub.stat()
                    found.append((f"{entry.name}/{sub.name}", sst.st_mtime_ns, sst.st_size))
        except OSError:
            found.append((entry.name, -1, -1))  # vanished mid-scan: differs from any real stat
    return tuple(found)


class ModelRegistry:
    """The cached model store of ``[inference] models_dir`` and the predictors opened from it.

    Parameters
    ----------
    config : InferenceConfig
        The node's ``[inference]`` section (models_dir, backend order and options, batching delay).
    """

    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._store: ModelStore | None = None
        self._fingerprint: Fingerprint = ()
        self._predictors: dict[str, Predictor] = {}

    @property
    def models_dir(self) -> Path:
        """The folder the store is read from."""
        return Path(self.config.models_dir)

    @property
    def options(self) -> BackendOptions:
        """Backend options of the ``[inference]`` section."""
        return backend_options(self.config)

    def store(self) -> ModelStore:
        """The validated store; scanned again only when ``models_dir`` changed since the last scan."""
        current = _fingerprint(self.models_dir)
        with self._lock:
            if self._store is None or current != self._fingerprint:
                self._store = ModelStore([self.models_dir])
                self._fingerprint = current
            return self._store

    def get(self, name: str) -> ModelEntry:
        """The entry of model ``name``.

        Raises
        ------
        ModelError
            ``kind`` ``not_found``: no valid model of that name.
        """
        store = self.store()
        try:
            return store.get(name)
        except InferenceError as exc:
            raise ModelError.wrap(exc) from exc

    def select(self, spec: ModelSpec) -> Selection:
        """The backend the model of ``spec`` would run on here, and why each other one would not."""
        return select_backend(spec, list(self.config.backends), self.options)

    def reload(self) -> None:
        """Drop the cached store: the next read scans ``models_dir`` again (an admin route changed it)."""
        with self._lock:
            self._store = None

    def forget(self, name: str) -> None:
        """Reload the store and close the cached predictor of ``name`` (its files changed or were removed)."""
        with self._lock:
            self._store = None
            predictor = self._predictors.pop(name, None)
        if predictor is not None:
            predictor.close()

    def status(self) -> dict[str, str | None]:
        """Each model of the store: None when a backend can run it, else why not (for ``/readyz``)."""
        store = self.store()
        status: dict[str, str | None] = {path.parent.name: f"invalid spec: {msg}" for path, msg in store.errors.items()}
        for name in store.names():
            selection = self.select(store.get(name).spec)
            status[name] = None if selection.name else "no backend: " + "; ".join(
                f"{k}: {v}" for k, v in selection.passed_over.items())
        return status

    def predictor(self, name: str) -> Predictor:
        """The shared predictor of model ``name``, opened on first use.

        Raises
        ------
        ModelError
            ``kind`` ``not_found`` (no such model in the store), ``unavailable`` (no backend
            can run it here) or ``backend`` (it failed to load).
        """
        with self._lock:
            predictor = self._predictors.get(name)
        return predictor if predictor is not None else self.predictor_of(self.get(name))

    def predictor_of(self, entry: ModelEntry) -> Predictor:
        """The shared predictor of ``entry``'s model; one already open is kept (it may predate ``entry``).

        Raises
        ------
        ModelError
            No backend can run it here, or it failed to load.
        """
        # Deferred: opening a predictor pulls in NumPy and the backend runtimes, which `dicom-node status` never needs.
        from inference.predictor import open_predictor

        with self._lock:
            predictor = self._predictors.get(entry.spec.name)
            if predictor is None:
                try:
                    predictor = open_predictor(entry, self.options, list(self.config.backends),
                                               max_delay_s=self.config.max_batch_delay_ms / 1000.0)
                except InferenceError as exc:
                    raise ModelError.wrap(exc) from exc
                self._predictors[entry.spec.name] = predictor
            return predictor

    def loaded(self) -> dict[str, Predictor]:
        """The predictors open now, by model name (a copy, for metrics)."""
        with self._lock:
            return dict(self._predictors)

    def close(self) -> None:
        """Close every predictor this registry opened."""
        with self._lock:
            predictors = list(self._predictors.values())
            self._predictors.clear()
        for predictor in predictors:
            predictor.close()
