"""Triton Python-backend model that runs a dicom-node ONNX model with onnxruntime.

Copied by the test launcher into ``<repo>/<model>/1/model.py`` next to
``model.onnx``. Runs inside Triton's Python backend stub (in .venv-triton,
numpy<2), so it imports nothing from dicom-node. Requests merged by Triton's
dynamic batcher are concatenated along the batch axis into one ONNX Runtime
call and split back; a request that fails gets its own error response.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The Python backend's model interface: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX model of this version folder on the CPU provider."""
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("DICOM_NODE_TRITON_ORT_THREADS", "1"))
        # No spinning pool threads: the server shares the cores with its clients.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, feeds)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order."""
        batches = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        shapes = {tuple(b[n].shape[1:] for n in self.inputs) for b in batches}
        if len(shapes) == 1 and len(batches) > 1:
            try:
                merged = {n: np.concatenate([b[n] for b in batches]) for n in self.inputs}
                outs = self._run(merged)
            except Exception:  # noqa: BLE001 - fall back to per-request runs so one bad request fails alone
                outs = None
            if outs is not None:
                responses, start = [], 0
                for b in batches:
                    size = b[self.inputs[0]].shape[0]
                    tensors = [pb_utils.Tensor(n, o[start : start + size]) for n, o in zip(self.outputs, outs, strict=False)]
                    responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
                    start += size
                return responses
        return [self._single(b) for b in batches]

    def _single(self, feeds: dict[str, np.ndarray]) -> Any:
        try:
            outs = self._run(feeds)
        except Exception as exc:  # noqa: BLE001 - reported to the client as this request's error
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}"))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outs, strict=False)])

    def finalize(self) -> None:
        """Drop the session."""
        self.session = None
