"""Running an invocation whose input lies in a bucket or whose results go to one (the Triton facade's bucket endpoints).

An invocation row (:mod:`dicom_node.invocations`) carries ``input_url`` and ``output_url``
(index migration 4). The facade's ``POST /bucket_invocations`` and
``POST /bucket_invocations_azure_uae`` (:mod:`dicom_node.api.routers.facade`) submit:

- a single object: fetched at request time into the invocation's upload, as ``/invocations``
  stores an upload; ``input_url`` names the object;
- one object of a folder of images (PNG, JPEG, TIFF, BMP): one invocation per file; the
  object is fetched here when the invocation runs (``input_url`` is the object);
- a folder of DICOM files: one invocation; ``input_url`` is the folder (ends in ``/``); its
  files are listed and fetched here, grouped by Series Instance UID, and the model runs on
  each series that its input contract accepts.

Results (when ``output_url``, the folder ``<bucket>/<facade.output_prefix>/<request_uuid>/``, is set)::

    prediction.json                  the invocation's result body (as the webhook gets it)
    mask.png                         image input: 8-bit label map (0 background; one label: 255)
    series-<n>/seg.dcm, sr.dcm       DICOM input: the SEG and TID 1500 SR of series n (1-based,
                                     in Series Instance UID order), as the job pipeline writes them

A DICOM input's SEG and SR are also stored under ``<storage.root>/results/`` and indexed with
the request UUID as their job id, as a series job's are, whether or not they are written to a
bucket: ``GET /v1/studies/{study}/results``, ``GET /v1/results/{sop}`` and WADO-RS serve them.

Fetched files are named by the node (``0001.dcm``, never a peer's key) under
``<storage.root>/tmp/inv-<request_uuid>.d/`` and removed when the run ends.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.api.inputs import (
    DecodedInput,
    InputRejected,
    check_contract,
    decode_for_model,
    sniff,
)
from dicom_node.api.predictions import instance_error, run_decoded, summarise
from dicom_node.archive.backfill import index_result
from dicom_node.config import NodeConfig
from dicom_node.errors import DicomNodeError, ModelError
from dicom_node.index import IndexWriter, qido
from dicom_node.index import jobs as job_rows
from dicom_node.ingest import check_framing
from dicom_node.invocations import Row
from dicom_node.jobs.stages import FileResultWriter
from dicom_node.objects import ObjectStoreError, ObjectStores, ObjectTooLarge, ObjectUrl
from dicom_node.pixels.decode import read_dataset
from dicom_node.pixels.volume import load_series
from dicom_node.registry import ModelRegistry
from dicom_node.spool import Spool
from dicom_node.staging import parse_meta
from inference.errors import InferenceError, InputError, ParameterError
from inference.predictor import Predictor

log = logging.getLogger(__name__)

#: Bytes read to find a file's File Meta Information (STOW-RS staging bounds it the same way).
META_LIMIT = 1 << 20
#: Object names treated as images in a folder (everything else is taken for DICOM, checked by content).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_image_key(key: str) -> bool:
    """True when an object's name says it is an image (one invocation per file in a folder)."""
    return key.lower().endswith(IMAGE_SUFFIXES)


def mask_png(prediction: dict[str, Any]) -> bytes | None:
    """The 8-bit label map of a one-slice segmentation summary, as PNG (None when it has no run lengths).

    Background is 0; with one label its pixels are 255 (visible as is), with several the
    n-th label (1-based, spec order) is n.
    """
    from PIL import Image

    labels = prediction.get("labels") or []
    out: np.ndarray | None = None
    for n, label in enumerate(labels, start=1):
        rle = label.get("rle")
        if not rle or len(rle["shape"]) != 3 or rle["shape"][0] != 1:
            return None
        shape = tuple(int(v) for v in rle["shape"][1:])
        counts = np.asarray(rle["counts"], dtype=np.int64)
        values = np.zeros(len(counts), dtype=bool)
        values[1::2] = True  # runs alternate, starting with background
        flat = np.repeat(values, counts)
        if out is None:
            out = np.zeros(shape, dtype=np.uint8)
        out[flat.reshape(shape)] = 255 if len(labels) == 1 else n
    if out is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "PNG")
    return buf.getvalue()


class BucketRunner:
    """Run one bucket invocation and write its results (see the module docstring).

    Parameters
    ----------
    config : NodeConfig
        Limits (``api.max_pixels``, ``api.max_body_bytes``, ``pixels``, ``scp.max_inflated_bytes``) and result labels.
    models : ModelRegistry
        The shared predictors.
    objects : ObjectStores
        The node's object storage (allowlists, caps).
    tmp_dir : Path
        The spool's ``tmp``.
    writer : IndexWriter
        Records the SEG and SR in the index (``results``, the QIDO-RS search tables).
    spool : Spool, optional
        The node's spool: with ``storage.spool_url`` the SEG and SR also go to the shared store.
    """

    def __init__(self, config: NodeConfig, models: ModelRegistry, objects: ObjectStores, tmp_dir: Path,
                 writer: IndexWriter, spool: Spool | None = None) -> None:
        self.config = config
        self.models = models
        self.objects = objects
        self.tmp_dir = tmp_dir
        self.writer = writer
        #: SEG and SR are stored and indexed as a series job's are, so they stay downloadable and searchable.
        self.results = FileResultWriter(config, spool)

    def __call__(self, row: Row, upload: Path) -> dict[str, object]:
        """``{"prediction", "modelVersionId", "result_path"}`` or ``{"error": {...}}``; never raises for bad input."""
        work = self.tmp_dir / f"inv-{row['id']}.d"
        try:
            work.mkdir(exist_ok=True)
            return self._run(row, upload, work)
        except InputRejected as exc:
            return instance_error(exc.code, exc.description)
        except ObjectStoreError as exc:
            # A transient store failure is run again (dicom_node.invocations.INVOCATION_RETRY).
            return {**instance_error("object_store", str(exc)), **({"retry": True} if exc.retryable else {})}
        except (ModelError, InferenceError) as exc:
            return instance_error("model_unavailable", str(exc))
        except OSError as exc:
            log.error("bucket invocation failed id=%s error=%s", row["id"], exc.strerror)
            return instance_error("internal_error", "the fetched input could not be read or written")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, row: Row, upload: Path, work: Path) -> dict[str, object]:
        output = ObjectUrl.parse(str(row["output_url"])) if row.get("output_url") else None
        predictor = self.models.predictor(str(row["model"]))
        params = json.loads(str(row["parameters"] or "{}"))
        source = str(row["input_url"]) if row.get("input_url") else None
        if source is not None and source.endswith("/"):
            outcome = self._series(str(row["id"]), predictor, params,
                                   self._fetch_folder(ObjectUrl.parse(source), work), output)
        else:
            if not upload.exists() and source is not None:
                self.objects.download(ObjectUrl.parse(source), upload, max_bytes=self.config.api.max_body_bytes)
            outcome = self._single(str(row["id"]), predictor, params, upload, work, output)
        if "error" in outcome:
            return outcome
        result: dict[str, object] = {**outcome, "modelVersionId": predictor.spec.version,
                                     "result_path": f"{output}/" if output is not None else None}
        if output is not None:
            self.objects.put(output.child("prediction.json"), json.dumps(result, sort_keys=True).encode(),
                             content_type="application/json")
        return result

    # -- inputs ------------------------------------------------------------------------------------------------

    def _fetch_folder(self, folder: ObjectUrl, work: Path) -> list[Path]:
        """Fetch the folder's non-image objects (bounded by ``facade.max_folder_objects``) under node-chosen names."""
        limit = self.config.facade.max_folder_objects
        found = [o for o in self.objects.list(folder, max_items=limit + 1)
                 if not o.url.key.endswith("/") and not is_image_key(o.url.key)]
        if len(found) > limit:
            raise InputRejected("too_many_objects", f"{folder} holds more than facade.max_folder_objects = {limit} "
                                "objects; give the folder of one study")
        budget = self.config.facade.max_folder_bytes  # checked at request time; the folder may have grown since
        paths = []
        for n, info in enumerate(sorted(found, key=lambda o: o.url.key), start=1):
            path = work / f"{n:05d}.dcm"
            try:
                budget -= self.objects.download(info.url, path, max_bytes=budget)
            except ObjectTooLarge as exc:
                raise InputRejected("too_large", f"the folder's DICOM files hold more than facade.max_folder_bytes = "
                                    f"{self.config.facade.max_folder_bytes}") from exc
            paths.append(path)
        return paths

    def _single(self, rid: str, predictor: Predictor, params: dict[str, Any], upload: Path, work: Path,
                output: ObjectUrl | None) -> dict[str, Any]:
        """One object: an image (prediction JSON and mask) or one DICOM instance (a series of one)."""
        with upload.open("rb") as fh:
            head = fh.read(132)
        if sniff(head) == "dicom":
            target = work / "00001.dcm"
            shutil.copyfile(upload, target)
            return self._series(rid, predictor, params, [target], output)
        data = upload.read_bytes()  # fetched with the upload cap (api.max_body_bytes)
        decoded = decode_for_model(data, predictor.spec, self.tmp_dir, self.config.api.max_pixels,
                                   gpu=self.config.pixels.gpu_decode)
        outcome = run_decoded(predictor, decoded, params)
        if "error" in outcome:
            return outcome
        if output is None:
            return {"prediction": outcome}
        mask = mask_png(outcome) if predictor.spec.task == "segmentation" else None
        if mask is not None:
            self.objects.put(output.child("mask.png"), mask, content_type="image/png")
        return {"prediction": outcome}

    # -- DICOM series --------------------------------------------------------------------------------------------

    def _series(self, rid: str, predictor: Predictor, params: dict[str, Any], paths: list[Path],
                output: ObjectUrl | None) -> dict[str, Any]:
        """Group DICOM files by series; run each series the contract accepts; write its SEG and SR."""
        max_inflated = self.config.scp.max_inflated_bytes
        groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
        skipped = 0
        for n, path in enumerate(paths, start=1):
            if not self._framed(path, n):
                skipped += 1  # not DICOM: left out, and counted in the answer
                continue
            try:
                ds = read_dataset(path, max_inflated_bytes=max_inflated, stop_before_pixels=True)
                groups[str(ds.SeriesInstanceUID)].append((path, ds))
            except (DicomNodeError, AttributeError):
                skipped += 1  # no Series Instance UID: left out, and counted
        if not groups:
            raise InputRejected("undecodable", f"no readable DICOM Part 10 file among the {len(paths)} object(s)")
        series = []
        for n, uid in enumerate(sorted(groups), start=1):
            series.append(self._one_series(rid, predictor, params, groups[uid], n, output))
        failed = [s for s in series if "error" in s]
        if len(failed) == len(series):
            return instance_error(str(failed[0]["error"]["code"]), str(failed[0]["error"]["description"]))
        return {"prediction": {"series": series, "skipped_objects": skipped}}

    def _framed(self, path: Path, n: int) -> bool:
        """False for a file that is no DICOM Part 10; True once a DICOM file passed the ingest's framing walk.

        Raises
        ------
        InputRejected
            ``undecodable``: a DICOM file whose element framing or declared pixel geometry is broken
            (a series missing it would be decoded with a gap), naming the object's place in key order.
        """
        with path.open("rb") as fh:
            head = fh.read(META_LIMIT)
        if sniff(head) != "dicom":
            return False
        try:
            parsed = parse_meta(head)
            if parsed is None or not parsed[0].get("transfer_syntax"):
                raise ValueError("the File Meta Information is cut short or names no Transfer Syntax UID")
            check_framing(path, parsed[1], parsed[0]["transfer_syntax"], self.config.scp.max_inflated_bytes)
        except (ValueError, DicomNodeError) as exc:
            raise InputRejected("undecodable", f"DICOM object {n} of the input (in key order) is not well "
                                f"framed: {exc}") from exc
        return True

    def _one_series(self, rid: str, predictor: Predictor, params: dict[str, Any], files: list[tuple[Path, Any]],
                    n: int, output: ObjectUrl | None) -> dict[str, Any]:
        spec = predictor.spec
        headers = [ds for _, ds in files]
        entry: dict[str, Any] = {"series_instance_uid": str(headers[0].SeriesInstanceUID), "instances": len(files)}
        try:
            check_contract(headers, spec)
            volume = load_series([p for p, _ in files], workers=0, gpu=self.config.pixels.gpu_decode,
                                 max_inflated_bytes=self.config.scp.max_inflated_bytes,
                                 max_volume_bytes=self.config.pixels.max_volume_bytes)
        except InputRejected as exc:
            return {**entry, **instance_error(exc.code, exc.description)}
        except DicomNodeError as exc:
            return {**entry, **instance_error("undecodable", f"the series could not be decoded into a volume: {exc}")}
        try:
            prediction = predictor.predict(volume.array, params)
        except (InputError, ParameterError) as exc:
            return {**entry, **instance_error("model_input", f"the input does not fit model {spec.name!r}: {exc}")}
        except InferenceError as exc:
            return {**entry, **instance_error("inference_failed", f"inference failed: {exc}")}
        spacing = tuple(float(s) for s in volume.spacing)
        entry["prediction"] = summarise(spec, prediction, DecodedInput(volume.array, spacing, "dicom"))  # type: ignore[arg-type]
        try:
            rows = self.results.write({"id": rid}, predictor.entry, volume, prediction,
                                      {str(ds.SOPInstanceUID): ds for ds in headers})
        except DicomNodeError as exc:
            return {**entry, **instance_error("write_failed", f"the SEG/SR could not be written: {exc}")}
        self._record(rows)
        for row in rows:
            name = "seg" if row["kind"] == "SEG" else "sr"
            entry[f"{name}_sop_instance_uid"] = str(row["sop_instance_uid"])
            if output is not None:
                url = output.child(f"series-{n}/{name}.dcm")
                self.objects.put(url, self.results.path_of(str(row["path"])), content_type="application/dicom")
                entry[name] = str(url)
        return entry

    def _record(self, rows: list[dict[str, Any]]) -> None:
        """Index the stored SEG and SR as the job pipeline does: ``results`` rows and the search tables."""
        found = [index_result(self.results.path_of(str(row["path"])), self.config.scp.max_inflated_bytes)
                 for row in rows]
        now = time.time()

        def record(conn: sqlite3.Connection) -> None:
            job_rows.record_results(conn, rows)
            for rec in found:
                if rec is not None:
                    qido.record(conn, rec, now)

        self.writer.run(record)
