"""One job's production stages: validate -> decode -> infer -> write; then it is ``delivering``.

Each stage boundary is a committed state change; a crash runs the job again from
the start (mid-stage work is redone; result UIDs are deterministic), which the
work queue counts as an attempt (:mod:`dicom_node.workqueue`). A failure of the
input (contract, decoding) ends the job ``failed`` with the reason. Delivery is
its own kind of work (:class:`dicom_node.jobs.worker.DeliveryHandler`), queued
when the job reaches ``delivering``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dicom_node.archive.backfill import index_result
from dicom_node.config import NodeConfig
from dicom_node.errors import (
    ContractViolation,
    DicomNodeError,
    InferenceError,
    ModelError,
    PixelError,
    ValidationError,
)
from dicom_node.index import Index, IndexWriter, qido
from dicom_node.index import jobs as ops
from dicom_node.jobs.facts import series_files
from dicom_node.pixels.decode import read_dataset
from dicom_node.pixels.pool import DecodePool
from dicom_node.pixels.volume import Volume, load_series
from dicom_node.registry import ModelRegistry
from dicom_node.spool import Spool
from dicom_node.validation.contract import Contract
from dicom_node.validation.rules import validate_series

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from inference.predictor import Prediction
    from inference.store import ModelEntry

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ResultWriter(Protocol):
    """Writes a job's result objects and returns their index rows."""

    def write(self, job: dict[str, Any], entry: ModelEntry, volume: Volume, prediction: Prediction,
              headers: dict[str, Dataset]) -> list[dict[str, Any]]:
        """Write SEG/SR for one prediction (source headers by SOP Instance UID); returns ``results`` rows.

        ``entry`` is the model that ran (its spec and ONNX digest label the objects).
        """
        ...


class StageTimer(Protocol):
    """Times named stages (:class:`dicom_node.workqueue.WorkItem`: the queue records the timings)."""

    @property
    def stage_times(self) -> dict[str, float]: ...

    def stage(self, name: str) -> AbstractContextManager[None]: ...


class Pipeline:
    """Runs the stages of one claimed job.

    Parameters
    ----------
    config : NodeConfig
        Validated configuration.
    index, writer, spool
        Storage.
    results : ResultWriter
        Writes the result objects.
    models : ModelRegistry
        The node's model store and shared predictors.
    """

    def __init__(self, config: NodeConfig, index: Index, writer: IndexWriter, spool: Spool,
                 results: ResultWriter, models: ModelRegistry) -> None:
        self.config = config
        self.index = index
        self.writer = writer
        self.spool = spool
        self.results = results
        self.models = models
        self._pool: DecodePool | None = None  # one decode pool for the node's lifetime (spawning workers costs ~0.5 s)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the decode pool (the predictors belong to the :class:`ModelRegistry`)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def run(self, job: dict[str, Any], timer: StageTimer) -> str | None:
        """Produce ``job``'s results (it is ``validating``), leaving it ``delivering``; stages timed by ``timer``.

        Returns
        -------
        str or None
            None when the job reached ``delivering``; the reason when it ended ``failed``.
        """
        jid = job["id"]
        try:
            self._produce(job, timer)
            return None
        except ContractViolation as exc:
            return self._fail(jid, f"input does not satisfy the model's contract: {exc}", exc.issues)
        except ValidationError as exc:
            return self._fail(jid, f"input does not form a valid volume: {exc}")
        except PixelError as exc:
            return self._fail(jid, f"pixel data could not be decoded: {exc}")
        except (ModelError, InferenceError) as exc:  # InferenceError: a spec read outside the wrapped calls
            return self._fail(jid, f"inference failed: {exc}")
        except DicomNodeError as exc:
            return self._fail(jid, str(exc))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            log.exception("job failed unexpectedly job=%s", jid)
            return self._fail(jid, f"internal error: {type(exc).__name__}")

    def _fail(self, jid: str, reason: str, details: Any = None) -> str:
        log.warning("job failed job=%s reason=%s", jid, reason)
        self.writer.run(lambda c: ops.finish(c, jid, "failed", time.time(), reason, details))
        return reason

    def _stage(self, jid: str, timer: StageTimer, next_state: str, work: Callable[[], _T], name: str,
               result: Callable[[_T], dict[str, Any] | None] | None = None) -> _T:
        with timer.stage(name):
            value = work()
        seconds = timer.stage_times[name]
        payload = result(value) if result else None
        self.writer.run(lambda c: ops.advance(c, jid, next_state, time.time(), {name: seconds}, payload))
        return value

    def _produce(self, job: dict[str, Any], timer: StageTimer) -> None:
        jid = job["id"]
        conn = self.index.reader()
        try:
            files = series_files(conn, self.spool, job["series_instance_uid"])
        finally:
            conn.close()
        entry = self.models.get(job["model"])
        # Headers are read once: the contract check and the SEG/SR writers share them.
        headers: dict[str, Dataset] = {}
        self._stage(jid, timer, "decoding", lambda: self._validate(entry, self._headers(files, headers)), "validate")
        volume = self._stage(jid, timer, "inferring", lambda: self._decode(files), "decode")
        ran, prediction = self._stage(jid, timer, "writing", lambda: self._infer(entry, volume), "infer")
        self._stage(
            jid, timer, "delivering", lambda: self._write(job, ran, volume, prediction, headers), "write",
            result=lambda rows: {"objects": [{k: r[k] for k in ("sop_instance_uid", "kind", "path")} for r in rows]},
        )

    def satisfies_contract(self, model: str, files: list[Path]) -> bool:
        """True when ``files`` pass the model's input contract (headers only); False also for unknown models."""
        try:
            self._validate(self.models.get(model), self._headers(files, {}))
        except (ValidationError, ModelError, InferenceError, PixelError) as exc:
            log.info("routing: contract of model=%s not satisfied: %s", model, exc)
            return False
        return True

    def _headers(self, files: list[Path], into: dict[str, Dataset]) -> list[Dataset]:
        """Read the headers (no pixel data) of ``files`` into ``into`` by SOP Instance UID; returns them."""
        for path in files:
            ds = read_dataset(str(path), stop_before_pixels=True, max_inflated_bytes=self.config.scp.max_inflated_bytes)
            into[str(ds.SOPInstanceUID)] = ds
        return list(into.values())

    def _validate(self, entry: ModelEntry, headers: list[Dataset]) -> None:
        contract = Contract.from_dict(entry.spec.contract_table())
        report = validate_series(headers, contract, decode=False,
                                 max_inflated_bytes=self.config.scp.max_inflated_bytes)
        if not report.passed:
            raise ContractViolation(
                f"{len(report.issues)} issue(s); first: {report.issues[0].message}", report.to_json()["issues"]
            )

    def _decode(self, files: list[Path]) -> Volume:
        with self._lock:
            if self._pool is None:
                self._pool = DecodePool(self.config.pixels.decode_workers or None)
            pool = self._pool
        return load_series(files, pool=pool, gpu=self.config.pixels.gpu_decode,
                           max_inflated_bytes=self.config.scp.max_inflated_bytes,
                           max_volume_bytes=self.config.pixels.max_volume_bytes)

    def _infer(self, entry: ModelEntry, volume: Volume) -> tuple[ModelEntry, Prediction]:
        """Run the shared predictor of ``entry``'s model; returns the entry it was opened with and its prediction.

        The predictor may predate ``entry`` (it is kept across jobs), so the
        results are labelled with the entry that was actually loaded.
        """
        predictor = self.models.predictor_of(entry)
        try:
            return predictor.entry, predictor.predict(volume.array, {})
        except InferenceError as exc:  # the boundary into dicom-node's tree (see dicom_node.errors)
            raise ModelError.wrap(exc) from exc

    def _write(self, job: dict[str, Any], entry: ModelEntry, volume: Volume, prediction: Prediction,
               headers: dict[str, Dataset]) -> list[dict[str, Any]]:
        rows = self.results.write(job, entry, volume, prediction, headers)
        # The search index (QIDO-RS, C-FIND) learns each result in the transaction that records it.
        found = [index_result(self.spool.local(str(row["path"]), result=True), self.config.scp.max_inflated_bytes) for row in rows]
        searchable = [rec for rec in found if rec is not None]
        now = time.time()

        def record(conn: sqlite3.Connection) -> None:
            ops.record_results(conn, rows)
            for rec in searchable:
                qido.record(conn, rec, now)

        self.writer.run(record)
        return rows
