"""The write and deliver stages of the pipeline, on the writers and delivery packages."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.config import NodeConfig
from dicom_node.delivery.deliverer import Caller, Deliverer
from dicom_node.errors import DeliveryError, StorageError
from dicom_node.index import Index, IndexWriter, instances
from dicom_node.objects import ObjectStores
from dicom_node.spool import Spool
from dicom_node.writers.options import WriterOptions
from dicom_node.writers.results import build_results

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_node.pixels.volume import Volume
    from inference.predictor import Prediction
    from inference.store import ModelEntry

log = logging.getLogger(__name__)

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


class FileResultWriter:
    """Write result objects durably under ``<storage.root>/results`` and describe them for the index.

    A result's file name derives from its (deterministic) SOP Instance UID, so a
    re-run replaces the file rather than adding one. With the node's ``spool`` and
    ``storage.spool_url``, each file is also written to the shared store before its
    index row commits, and read back through the spool's cache on any node.
    """

    def __init__(self, config: NodeConfig, spool: Spool | None = None) -> None:
        self.config = config
        self.root = Path(config.storage.root).resolve()
        self.spool = spool

    def path_of(self, relpath: str) -> Path:
        """Absolute path of a result's storage-relative path (fetched from the shared store when needed)."""
        return self.spool.local(relpath, result=True) if self.spool is not None else self.root / relpath

    def write(self, job: dict[str, Any], entry: ModelEntry, volume: Volume, prediction: Prediction,
              headers: dict[str, Dataset]) -> list[dict[str, Any]]:
        """Build, check and store SEG/SR for one prediction; returns ``results`` rows.

        Parameters
        ----------
        job : dict
            The job row (``id`` is used).
        entry : inference.store.ModelEntry
            The model that produced ``prediction`` (its spec and ONNX digest go into the objects).
        volume : dicom_node.pixels.volume.Volume
            The decoded series.
        prediction : inference.predictor.Prediction
            The model's output.
        headers : dict
            The source headers by SOP Instance UID, read once by the pipeline.
        """
        objects = build_results(headers, volume, entry.spec, prediction,
                                WriterOptions.from_config(self.config.results), model_sha256=entry.onnx_sha256())
        rows = []
        for kind, data, sop_uid, series_uid, sop_class in (
            ("SEG", objects.seg, objects.uids.seg_sop_instance_uid, objects.uids.seg_series_instance_uid, SEG_CLASS),
            ("SR", objects.sr, objects.uids.sr_sop_instance_uid, objects.uids.sr_series_instance_uid, SR_CLASS),
        ):
            if data is None:
                continue
            relpath = self._store(sop_uid, data)
            rows.append({
                "sop_instance_uid": sop_uid, "job_id": job["id"], "kind": kind, "sop_class_uid": sop_class,
                "series_instance_uid": series_uid, "study_instance_uid": volume.study_instance_uid,
                "source_series_uid": volume.series_instance_uid, "model": entry.spec.name,
                "model_version": entry.spec.version, "path": relpath, "created_at": time.time(),
            })
        return rows

    def _store(self, sop_uid: str, data: bytes) -> str:
        digest = hashlib.sha256(sop_uid.encode("ascii")).hexdigest()[:40]
        relpath = f"results/{digest[:2]}/{digest}.dcm"
        final = self.root / relpath
        temp = final.with_suffix(".part")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.config.storage.fsync:
                    os.fsync(fh.fileno())
            os.replace(temp, final)
        except OSError as exc:
            raise StorageError(f"cannot store a result object: {exc.strerror}") from exc
        if self.spool is not None:
            self.spool.publish(relpath)
        return relpath


class JobDelivery:
    """Deliver a job's result objects to each of its destinations through the ledger."""

    def __init__(self, config: NodeConfig, index: Index, writer: IndexWriter, results: FileResultWriter,
                 objects: ObjectStores | None = None) -> None:
        self.deliverer = Deliverer.from_config(config.delivery, objects)
        self.retry_after = config.delivery.retry.initial
        self.index = index
        self.writer = writer
        self.results = results

    def _caller(self, series_uid: str) -> Caller | None:
        conn = self.index.reader()
        try:
            sender = instances.series_sender(conn, series_uid)
        finally:
            conn.close()
        return Caller(sender.calling_ae, sender.peer_host or "") if sender else None

    def deliver(self, job: dict[str, Any]) -> tuple[str, str | None, float]:
        """Returns ``(state, reason, next_attempt_at)``: done, delivering (retry later) or dead-letter."""
        destinations = json.loads(job["destinations"]) if isinstance(job["destinations"], str) else job["destinations"]
        result = json.loads(job["result"]) if isinstance(job.get("result"), str) else job.get("result") or {}
        try:
            objects = [self.results.path_of(o["path"]) for o in result.get("objects", [])]
        except StorageError as exc:  # storage.spool_url could not be read: a later attempt may succeed
            return "delivering", f"result objects unavailable: {exc}"[:1000], time.time() + self.retry_after
        if not destinations or not objects:
            return "done", None, 0.0
        caller = self._caller(job["series_instance_uid"])
        retry_at: list[float] = []
        dead: list[str] = []
        for name in destinations:
            try:
                outcome = self.deliverer.deliver(objects, name, self.writer.run, caller=caller)
            except DeliveryError as exc:
                dead.append(f"{name}: {exc}")
                continue
            failed = [o for o in outcome.objects if o.state in ("dead", "already_dead")]
            if failed:
                dead.append(f"{name}: {failed[0].detail or 'dead-lettered'}")
            elif not outcome.complete and outcome.next_attempt_at is not None:
                retry_at.append(outcome.next_attempt_at)
        if retry_at:
            return "delivering", "waiting to retry delivery", min(retry_at)
        if dead:
            return "dead-letter", "; ".join(dead)[:1000], 0.0
        return "done", None, 0.0
