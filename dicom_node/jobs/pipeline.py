"""One job's stages: validate -> decode -> infer -> write -> deliver.

Each stage boundary is a committed state change, so a crash resumes from the
last boundary (mid-stage work is redone; result UIDs are deterministic). A
failure of the input (contract, decoding) ends the job ``failed`` with the
reason; a delivery failure is retried or dead-lettered by the delivery stage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dicom_node.config import NodeConfig
from dicom_node.errors import (
    ContractViolation,
    DicomNodeError,
    InferenceError,
    ModelError,
    PixelError,
    ValidationError,
)
from dicom_node.index import Index, IndexWriter
from dicom_node.index import jobs as ops
from dicom_node.jobs.facts import series_files
from dicom_node.registry import ModelRegistry
from dicom_node.spool import Spool

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_node.pixels.pool import DecodePool
    from dicom_node.pixels.volume import Volume
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


class DeliveryStage(Protocol):
    """Delivers a job's result objects to its destinations."""

    def deliver(self, job: dict[str, Any]) -> tuple[str, str | None, float]:
        """Returns ``(state, reason, next_attempt_at)``: done, delivering (retry later) or dead-letter."""
        ...


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
    delivery : DeliveryStage
        Sends them.
    models : ModelRegistry
        The node's model store and shared predictors.
    """

    def __init__(self, config: NodeConfig, index: Index, writer: IndexWriter, spool: Spool,
                 results: ResultWriter, delivery: DeliveryStage, models: ModelRegistry) -> None:
        self.config = config
        self.index = index
        self.writer = writer
        self.spool = spool
        self.results = results
        self.delivery = delivery
        self.models = models
        self._pool: DecodePool | None = None  # one decode pool for the node's lifetime (spawning workers costs ~0.5 s)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the decode pool (the predictors belong to the :class:`ModelRegistry`)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def run(self, job: dict[str, Any]) -> None:
        """Run ``job`` from its current state to done, failed, dead-letter or a parked delivery."""
        jid = job["id"]
        try:
            if job["state"] == "validating":
                self._produce(job)
            self._deliver(job)
        except ContractViolation as exc:
            self._fail(jid, f"input does not satisfy the model's contract: {exc}", exc.issues)
        except ValidationError as exc:
            self._fail(jid, f"input does not form a valid volume: {exc}")
        except PixelError as exc:
            self._fail(jid, f"pixel data could not be decoded: {exc}")
        except (ModelError, InferenceError) as exc:  # InferenceError: a spec read outside the wrapped calls
            self._fail(jid, f"inference failed: {exc}")
        except DicomNodeError as exc:
            self._fail(jid, str(exc))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            log.exception("job failed unexpectedly job=%s", jid)
            self._fail(jid, f"internal error: {type(exc).__name__}")

    def _fail(self, jid: str, reason: str, details: Any = None) -> None:
        log.warning("job failed job=%s reason=%s", jid, reason)
        self.writer.run(lambda c: ops.finish(c, jid, "failed", time.time(), reason, details))

    def _stage(self, jid: str, next_state: str, work: Callable[[], _T], name: str,
               result: Callable[[_T], dict[str, Any] | None] | None = None) -> _T:
        t0 = time.perf_counter()
        value = work()
        seconds = time.perf_counter() - t0
        payload = result(value) if result else None
        self.writer.run(lambda c: ops.advance(c, jid, next_state, time.time(), {name: seconds}, payload))
        return value

    def _produce(self, job: dict[str, Any]) -> None:
        jid = job["id"]
        conn = self.index.reader()
        try:
            files = series_files(conn, self.spool, job["series_instance_uid"])
        finally:
            conn.close()
        entry = self.models.get(job["model"])
        # Headers are read once: the contract check and the SEG/SR writers share them.
        headers: dict[str, Dataset] = {}
        self._stage(jid, "decoding", lambda: self._validate(entry, self._headers(files, headers)), "validate")
        volume = self._stage(jid, "inferring", lambda: self._decode(files), "decode")
        ran, prediction = self._stage(jid, "writing", lambda: self._infer(entry, volume), "infer")
        rows = self._stage(
            jid, "delivering", lambda: self._write(job, ran, volume, prediction, headers), "write",
            result=lambda rows: {"objects": [{k: r[k] for k in ("sop_instance_uid", "kind", "path")} for r in rows]},
        )
        job["state"] = "delivering"
        job["result"] = json.dumps({"objects": [{k: r[k] for k in ("sop_instance_uid", "kind", "path")} for r in rows]})

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
        from dicom_node.pixels.decode import read_dataset

        for path in files:
            ds = read_dataset(str(path), stop_before_pixels=True, max_inflated_bytes=self.config.scp.max_inflated_bytes)
            into[str(ds.SOPInstanceUID)] = ds
        return list(into.values())

    def _validate(self, entry: ModelEntry, headers: list[Dataset]) -> None:
        from dicom_node.validation.contract import Contract
        from dicom_node.validation.rules import validate_series

        contract = Contract.from_dict(entry.spec.contract_table())
        report = validate_series(headers, contract, decode=False,
                                 max_inflated_bytes=self.config.scp.max_inflated_bytes)
        if not report.passed:
            raise ContractViolation(
                f"{len(report.issues)} issue(s); first: {report.issues[0].message}", report.to_json()["issues"]
            )

    def _decode(self, files: list[Path]) -> Volume:
        from dicom_node.pixels.pool import DecodePool
        from dicom_node.pixels.volume import load_series

        with self._lock:
            if self._pool is None:
                self._pool = DecodePool(self.config.pixels.decode_workers or None)
            pool = self._pool
        return load_series(files, pool=pool, gpu=self.config.pixels.gpu_decode,
                           max_inflated_bytes=self.config.scp.max_inflated_bytes)

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
        self.writer.run(lambda c: ops.record_results(c, rows))
        return rows

    def _deliver(self, job: dict[str, Any]) -> None:
        jid = job["id"]
        state, reason, next_at = self.delivery.deliver(job)
        self.writer.run(lambda c: ops.finish(c, jid, state, time.time(), reason, None, next_at))
        log.info("job %s job=%s%s", state, jid, f" reason={reason}" if reason else "")
