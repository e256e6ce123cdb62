"""Triton backend: a remote Triton Inference Server over KServe v2 (gRPC, or HTTP).

On load it checks server liveness/readiness and model readiness, then the
model's metadata and config against the spec: tensor names, data types, dims
(batch dim included as -1 when ``max_batch_size > 0``) and a ``max_batch_size``
at least the spec's, so a misconfigured server is refused before the first job
instead of failing on it. Batches from the local micro-batcher are sent as one
request each; the server's own dynamic batcher may merge them further.

``triton_url``: ``host:port`` or ``grpc://host:port`` for gRPC,
``http://host:port`` for HTTP (``tritonclient[http]``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend, BackendOptions
from inference.errors import BackendError, BackendUnavailableError
from inference.spec import ModelSpec
from inference.store import ModelEntry

log = logging.getLogger(__name__)

#: KServe v2 data types by NumPy dtype name (Triton's TYPE_FP32 is "FP32" on the wire).
V2_TYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}


def parse_url(url: str) -> tuple[str, str]:
    """Split ``triton_url`` into (protocol, ``host:port``)."""
    if url.startswith("http://"):
        return "http", url.removeprefix("http://").rstrip("/")
    return "grpc", url.removeprefix("grpc://").rstrip("/")


def _missing(protocol: str) -> str:
    return f"missing package: tritonclient (pip install 'tritonclient[{protocol}]')"


def _has_client(protocol: str) -> bool:
    """Whether ``tritonclient.<protocol>`` is installed, without importing tritonclient."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(loc) / protocol / "__init__.py").is_file() for loc in spec.submodule_search_locations)


def is_available(options: BackendOptions) -> tuple[bool, str]:
    """Needs tritonclient for the URL's protocol and a configured ``triton_url``; the server is not contacted."""
    protocol, address = parse_url(options.triton_url)
    if not _has_client(protocol):
        return False, _missing(protocol)
    if not options.triton_url:
        return False, "no server configured ([inference] triton_url is empty)"
    return True, f"Triton at {protocol}://{address}"


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise BackendUnavailableError(_missing(protocol)) from exc
    return client, InferenceServerException


def check_metadata(spec: ModelSpec, metadata: Mapping[str, Any], max_batch_size: int) -> None:
    """Compare the server's model metadata (KServe v2 JSON) with the spec.

    Raises
    ------
    BackendError
        Naming the first tensor, type or dim that differs.
    """
    if max_batch_size < spec.tensors.max_batch:
        raise BackendError(f"Triton model {spec.name!r}: max_batch_size {max_batch_size} < spec max_batch {spec.tensors.max_batch}")
    for kind, tensors in (("inputs", spec.tensors.inputs), ("outputs", spec.tensors.outputs)):
        served = {t["name"]: t for t in metadata.get(kind, [])}
        for t in tensors:
            if t.name not in served:
                raise BackendError(f"Triton model {spec.name!r}: {kind[:-1]} {t.name!r} not served (has {sorted(served)})")
            got = served[t.name]
            if got["datatype"] != V2_TYPES[t.dtype]:
                raise BackendError(f"Triton model {spec.name!r}: {t.name!r} is {got['datatype']}, spec says {V2_TYPES[t.dtype]}")
            shape = [int(d) for d in got["shape"]]
            want = [-1, *t.dims] if max_batch_size > 0 else t.dims
            if len(shape) != len(want) or any(w != -1 and s != -1 and s != w for s, w in zip(shape, want, strict=False)):
                raise BackendError(f"Triton model {spec.name!r}: {t.name!r} has shape {shape}, spec says {want}")


class TritonBackend(Backend):
    """A Triton model reached over gRPC or HTTP."""

    name = "triton"

    def __init__(self, entry: ModelEntry, options: BackendOptions) -> None:
        self._protocol, self._address = parse_url(options.triton_url)
        client, self._exc = _client_module(self._protocol)
        self._client_mod = client
        self._spec = entry.spec
        self._model = entry.spec.name
        self._timeout = options.triton_timeout_s
        try:
            self._client = client.InferenceServerClient(url=self._address)
            self._check_server()
        except self._exc as exc:
            raise BackendError(f"Triton at {self._address}: {exc}") from exc

    def _check_server(self) -> None:
        if not (self._client.is_server_live() and self._client.is_server_ready()):
            raise BackendError(f"Triton at {self._address} is not live and ready")
        if not self._client.is_model_ready(self._model):
            raise BackendError(f"Triton at {self._address}: model {self._model!r} is not ready")
        if self._protocol == "grpc":
            metadata = self._client.get_model_metadata(self._model, as_json=True)
            config = self._client.get_model_config(self._model, as_json=True)["config"]
        else:
            metadata = self._client.get_model_metadata(self._model)
            config = self._client.get_model_config(self._model)
        check_metadata(self._spec, metadata, int(config.get("max_batch_size", 0)))
        log.info("model ready backend=triton model=%s server=%s", self._model, self._address)

    @property
    def description(self) -> str:
        """Server address and protocol."""
        return f"triton {self._protocol}://{self._address}"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one batch as one KServe v2 inference request."""
        client = self._client_mod
        requests = []
        for t in self._spec.tensors.inputs:
            arr = np.ascontiguousarray(inputs[t.name], dtype=t.dtype)
            req = client.InferInput(t.name, list(arr.shape), V2_TYPES[t.dtype])
            req.set_data_from_numpy(arr)
            requests.append(req)
        wanted = [client.InferRequestedOutput(t.name) for t in self._spec.tensors.outputs]
        try:
            if self._protocol == "grpc":
                result = self._client.infer(self._model, requests, outputs=wanted, client_timeout=self._timeout)
            else:
                result = self._client.infer(self._model, requests, outputs=wanted, timeout=int(self._timeout * 1e6))
        except self._exc as exc:
            raise BackendError(f"Triton inference failed for {self._model!r}: {exc}") from exc
        return {t.name: result.as_numpy(t.name) for t in self._spec.tensors.outputs}

    def close(self) -> None:
        """Close the connection."""
        try:
            self._client.close()
        except self._exc as exc:
            log.debug("closing Triton client failed error=%s", exc)


def load(entry: ModelEntry, options: BackendOptions) -> Backend:
    """Connect to Triton and check ``entry``'s model there."""
    return TritonBackend(entry, options)
