"""The front end's part of invocations: running a model on an upload, as ``/v1/predict`` decodes it.

The invocation service itself (rows, the ``invocation`` and ``webhook`` kinds of work on the node's
queue, signing, retries) is :mod:`dicom_node.invocations`; this module gives it the
:class:`UploadRunner` that needs the REST input decoders, and builds it for a node.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dicom_node.api.bucket_runner import BucketRunner
from dicom_node.api.inputs import InputRejected, decode_for_model
from dicom_node.api.predictions import instance_error, run_decoded
from dicom_node.config import NodeConfig
from dicom_node.errors import ModelError
from dicom_node.invocations import InvocationService, Row
from dicom_node.node import Node
from dicom_node.registry import ModelRegistry
from inference.errors import InferenceError

log = logging.getLogger(__name__)


class UploadRunner:
    """Run one stored invocation: decode the upload for its model and predict (a :class:`~dicom_node.invocations.Runner`)."""

    def __init__(self, config: NodeConfig, models: ModelRegistry, tmp_dir: Path,
                 buckets: BucketRunner | None = None) -> None:
        self.config = config
        self.models = models
        self.tmp_dir = tmp_dir
        self.buckets = buckets

    def __call__(self, row: Row, upload: Path) -> dict[str, object]:
        """``{"prediction", "modelVersionId"}`` or ``{"error": {...}}``; never raises for bad input or a model failure.

        An invocation that reads from or writes to a bucket (the Triton facade's bucket
        endpoints) runs on the :class:`~dicom_node.api.bucket_runner.BucketRunner`.
        """
        if self.buckets is not None and (row.get("input_url") or row.get("output_url")):
            return self.buckets(row, upload)
        try:
            predictor = self.models.predictor(str(row["model"]))
            data = upload.read_bytes()
            decoded = decode_for_model(data, predictor.spec, self.tmp_dir, self.config.api.max_pixels,
                                       gpu=self.config.pixels.gpu_decode)
        except InputRejected as exc:
            return instance_error(exc.code, exc.description)
        except (ModelError, InferenceError) as exc:
            return instance_error("model_unavailable", str(exc))
        except OSError as exc:
            log.error("invocation upload unreadable id=%s error=%s", row["id"], exc.strerror)
            return instance_error("internal_error", "the stored upload could not be read")
        outcome = run_decoded(predictor, decoded, json.loads(str(row["parameters"] or "{}")))
        if "error" in outcome:
            return outcome
        return {"prediction": outcome, "modelVersionId": predictor.spec.version}


def invocation_service(node: Node) -> InvocationService:
    """The invocation service of ``node``, running uploads with an :class:`UploadRunner` (not started)."""
    return InvocationService(node.config, node.index, node.writer, node.spool.tmp, node.queue, node.outbound,
                             UploadRunner(node.config, node.models, node.spool.tmp,
                                          BucketRunner(node.config, node.models, node.objects, node.spool.tmp,
                                                       node.writer, node.spool)))
