"""Triton backend: one or several Triton Inference Servers over KServe v2 (gRPC, or HTTP).

On load it checks each server's liveness/readiness and model readiness, then
the model's metadata and config against the spec: tensor names, data types,
dims (batch dim included as -1 when ``max_batch_size > 0``) and a
``max_batch_size`` at least the spec's, so a misconfigured server is refused
before the first job instead of failing on it. Batches from the local
micro-batcher are sent as one request each; the server's own dynamic batcher
may merge them further.

Endpoints (issue 18, "Triton farm"): the node's ``[inference] triton_url`` and
``triton_urls`` list the servers the node may contact (an allowlist); a model's
``[triton] endpoints`` names which of them serve it, by default all. Requests go
to the endpoint with the fewest in flight (:mod:`inference.triton_pool`), which
also health-checks the endpoints in the background. A request that fails on one
endpoint with a connection, unavailable, timeout or model-not-loaded error takes
that endpoint out and is sent once more to another (inference is idempotent);
an answer that blames the request (KServe v2 ``INVALID_ARGUMENT``, HTTP 400) is
never retried. A server that answers but serves a different model contract
refuses the whole load: it would serve wrong results, not fail.

Endpoint syntax: ``host:port`` or ``grpc://host:port`` for gRPC,
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
from inference.triton_pool import Endpoint, EndpointPool, EndpointState, canonical, parse_endpoint

log = logging.getLogger(__name__)

#: KServe v2 data types by NumPy dtype name (Triton's TYPE_FP32 is "FP32" on the wire).
V2_TYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}


def parse_url(url: str) -> tuple[str, str]:
    """Split one endpoint into (protocol, ``host:port``) (:func:`inference.triton_pool.parse_endpoint`)."""
    return parse_endpoint(url)


def node_endpoints(options: BackendOptions) -> list[str]:
    """The servers the node may contact: ``triton_url``, then ``triton_urls``, canonical, without repeats.

    Raises
    ------
    ValueError
        One of them is not a valid endpoint.
    """
    found: list[str] = []
    for url in (options.triton_url, *options.triton_urls):
        if url and canonical(url) not in found:
            found.append(canonical(url))
    return found


def model_endpoints(spec: ModelSpec, options: BackendOptions) -> list[str]:
    """The endpoints serving ``spec``'s model: its ``[triton] endpoints``, else every node endpoint.

    Raises
    ------
    BackendError
        The spec names a server the node's config does not list: a model.toml (which the
        admin routes accept) must not make the node dial a server the operator never allowed.
    """
    allowed = node_endpoints(options)
    if not spec.triton.endpoints:
        return allowed
    wanted = [canonical(u) for u in spec.triton.endpoints]
    outside = [u for u in wanted if u not in allowed]
    if outside:
        raise BackendError(f"model {spec.name!r}: [triton] endpoints {outside} are not among the node's Triton "
                           f"servers {allowed} ([inference] triton_url / triton_urls); list them there first")
    return wanted


def _missing(protocol: str) -> str:
    return f"missing package: tritonclient (pip install 'tritonclient[{protocol}]')"


def _has_client(protocol: str) -> bool:
    """Whether ``tritonclient.<protocol>`` is installed, without importing tritonclient."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(loc) / protocol / "__init__.py").is_file() for loc in spec.submodule_search_locations)


def is_available(options: BackendOptions) -> tuple[bool, str]:
    """Needs configured endpoints and tritonclient for their protocols; no server is contacted."""
    try:
        urls = node_endpoints(options)
    except ValueError as exc:
        return False, str(exc)
    protocols = sorted({parse_endpoint(u)[0] for u in urls}) or ["grpc"]
    for protocol in protocols:
        if not _has_client(protocol):
            return False, _missing(protocol)
    if not urls:
        return False, "no server configured ([inference] triton_url is empty)"
    return True, f"Triton at {', '.join(urls)}"


def _client_module(protocol: str) -> tuple[Any, type[Exception]]:
    try:
        if protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise BackendUnavailableError(_missing(protocol)) from exc
    return client, InferenceServerException


#: Answers that blame the endpoint, not the request (gRPC status names as tritonclient reports them,
#: HTTP codes as strings): a server gone or stopping (Triton answers UNAVAILABLE "Server is stopping",
#: then NOT_FOUND while it unloads the model), a timeout, a cancelled call. INVALID_ARGUMENT, INTERNAL
#: (the model itself failed) and HTTP 400 are the request's and are never retried elsewhere.
_ENDPOINT_STATUSES = frozenset({
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.NOT_FOUND", "StatusCode.CANCELLED",
    "StatusCode.ABORTED", "404", "502", "503", "504",
})


def is_endpoint_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (from tritonclient or the socket) says the endpoint failed rather than the request."""
    if isinstance(exc, OSError):
        return True  # connection refused or reset, socket timeout (the HTTP client raises these bare)
    status = getattr(exc, "status", None)
    return callable(status) and status() in _ENDPOINT_STATUSES


class _EndpointDown(BackendError):
    """An endpoint could not be reached, or it or the model is not ready (the farm may do without it)."""


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
    """A Triton model reached over gRPC or HTTP on one or several servers."""

    name = "triton"

    def __init__(self, entry: ModelEntry, options: BackendOptions) -> None:
        self._spec = entry.spec
        self._model = entry.spec.name
        self._timeout = options.triton_timeout_s
        self._probe_timeout = options.triton_probe_timeout_s
        try:
            urls = model_endpoints(entry.spec, options)
        except ValueError as exc:
            raise BackendError(f"Triton endpoints of {self._model!r}: {exc}") from exc
        if not urls:
            raise BackendUnavailableError("no server configured ([inference] triton_url is empty)")
        self._modules = {p: _client_module(p) for p in sorted({parse_endpoint(u)[0] for u in urls})}
        self._errors = tuple({exc for _, exc in self._modules.values()} | {OSError})
        endpoints = self._open(urls)
        self._pool: EndpointPool[Any] = EndpointPool(endpoints, self._probe, self._close_client,
                                                     options.triton_health_interval_s, self._model)

    def _open(self, urls: list[str]) -> list[Endpoint[Any]]:
        """Check every endpoint; one that is down starts out of the pool, a contract mismatch refuses the load."""
        endpoints: list[Endpoint[Any]] = []
        down: list[str] = []
        for url in urls:
            try:
                endpoints.append(Endpoint(url, self._connect(url), healthy=True))
            except _EndpointDown as exc:
                endpoints.append(Endpoint(url, None, healthy=False, reason=str(exc)))
                down.append(str(exc))
            except BackendError:
                for e in endpoints:
                    self._close_client(e.client)
                raise
        if len(down) == len(urls):
            raise BackendError(down[0] if len(down) == 1 else f"no Triton endpoint serves {self._model!r}: {'; '.join(down)}")
        for reason in down:
            log.warning("Triton endpoint out at load model=%s reason=%s", self._model, reason)
        return endpoints

    def _connect(self, url: str) -> Any:
        """A new client for ``url``, checked as at load (readiness, metadata, config); closed again on failure."""
        protocol, address = parse_endpoint(url)
        module, exc_type = self._modules[protocol]
        try:
            if protocol == "http":
                client = module.InferenceServerClient(url=address, connection_timeout=self._probe_timeout,
                                                      network_timeout=max(self._timeout, self._probe_timeout))
            else:
                client = module.InferenceServerClient(url=address)
        except (exc_type, OSError) as exc:
            raise _EndpointDown(f"Triton at {address}: {exc}") from exc
        try:
            self._check_server(client, protocol, address)
        except BaseException:
            self._close_client(client)
            raise
        return client

    def _timeout_kw(self, protocol: str) -> dict[str, float]:
        # gRPC calls take a deadline each; the HTTP client's timeouts are set when it is built.
        return {"client_timeout": self._probe_timeout} if protocol == "grpc" else {}

    def _ready(self, client: Any, protocol: str, address: str) -> None:
        """KServe v2 server liveness/readiness and model readiness, each call bounded by the probe timeout."""
        kw = self._timeout_kw(protocol)
        try:
            if not (client.is_server_live(**kw) and client.is_server_ready(**kw)):
                raise _EndpointDown(f"Triton at {address} is not live and ready")
            if not client.is_model_ready(self._model, **kw):
                raise _EndpointDown(f"Triton at {address}: model {self._model!r} is not ready")
        except self._errors as exc:
            raise _EndpointDown(f"Triton at {address}: {exc}") from exc

    def _check_server(self, client: Any, protocol: str, address: str) -> None:
        self._ready(client, protocol, address)
        kw = self._timeout_kw(protocol)
        try:
            if protocol == "grpc":
                metadata = client.get_model_metadata(self._model, as_json=True, **kw)
                config = client.get_model_config(self._model, as_json=True, **kw)["config"]
            else:
                metadata = client.get_model_metadata(self._model)
                config = client.get_model_config(self._model)
        except self._errors as exc:
            raise _EndpointDown(f"Triton at {address}: {exc}") from exc
        check_metadata(self._spec, metadata, int(config.get("max_batch_size", 0)))
        log.info("model ready backend=triton model=%s server=%s", self._model, address)

    def _probe(self, endpoint: Endpoint[Any], full: bool) -> Any:
        """The pool's health check: readiness on the endpoint's client, or a fresh checked client when it is out."""
        if full:
            return self._connect(endpoint.url)
        self._ready(endpoint.client, endpoint.protocol, endpoint.address)
        return endpoint.client

    def _close_client(self, client: Any) -> None:
        if client is None:
            return
        try:
            client.close()
        except self._errors as exc:
            log.debug("closing Triton client failed error=%s", exc)

    @property
    def description(self) -> str:
        """Server addresses and protocols."""
        return "triton " + ", ".join(e.url for e in self._pool.endpoints)

    def endpoints(self) -> list[EndpointState]:
        """Each server's health and requests in flight (for metrics and tests)."""
        return self._pool.states()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one batch as one KServe v2 inference request; once more elsewhere if the endpoint failed."""
        arrays = {t.name: np.ascontiguousarray(inputs[t.name], dtype=t.dtype) for t in self._spec.tensors.inputs}
        tried: set[str] = set()
        failures: list[str] = []
        for _attempt in range(2):
            endpoint = self._pool.acquire(frozenset(tried))
            if endpoint is None:
                break
            tried.add(endpoint.url)
            ok = False
            try:
                outputs = self._infer_on(endpoint, arrays)
                ok = True
                return outputs
            except self._errors as exc:
                if not is_endpoint_failure(exc):
                    raise BackendError(f"Triton inference failed for {self._model!r}: {exc}") from exc
                failures.append(f"{endpoint.url}: {exc}")
                self._pool.take_out(endpoint, str(exc))
                log.warning("Triton request failed, trying another endpoint model=%s endpoint=%s error=%s",
                            self._model, endpoint.url, exc)
            finally:
                self._pool.release(endpoint, ok)
        if not failures:
            raise BackendError(f"Triton inference failed for {self._model!r}: the backend is closed")
        raise BackendError(f"Triton inference failed for {self._model!r}: {'; '.join(failures)}")

    def _infer_on(self, endpoint: Endpoint[Any], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module, _ = self._modules[endpoint.protocol]
        client = endpoint.client
        if client is None:  # closed while this request waited for it
            raise BackendError(f"Triton inference failed for {self._model!r}: the backend is closed")
        requests = []
        for t in self._spec.tensors.inputs:
            arr = arrays[t.name]
            req = module.InferInput(t.name, list(arr.shape), V2_TYPES[t.dtype])
            req.set_data_from_numpy(arr)
            requests.append(req)
        wanted = [module.InferRequestedOutput(t.name) for t in self._spec.tensors.outputs]
        if endpoint.protocol == "grpc":
            result = client.infer(self._model, requests, outputs=wanted, client_timeout=self._timeout)
        else:
            result = client.infer(self._model, requests, outputs=wanted, timeout=int(self._timeout * 1e6))
        return {t.name: result.as_numpy(t.name) for t in self._spec.tensors.outputs}

    def close(self) -> None:
        """Stop the health checks and close every connection."""
        self._pool.close()


def load(entry: ModelEntry, options: BackendOptions) -> Backend:
    """Connect to the model's Triton servers and check ``entry``'s model on each."""
    return TritonBackend(entry, options)
