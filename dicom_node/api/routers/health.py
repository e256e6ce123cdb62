"""Health: ``/ping``, ``/healthz`` (live), ``/readyz`` (ready, with what is not), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_node.api.auth import metrics_access
from dicom_node.api.deps import ApiServices, MetricsDep, ServicesDep
from dicom_node.errors import StorageError

router = APIRouter(tags=["health"])


@router.get("/ping", summary="200 when the node can serve")
def ping(request: Request) -> dict[str, str]:
    """Answer ``{"status": "ok"}``."""
    return {"status": "ok"}


@router.get("/healthz", summary="Liveness")
def healthz(request: Request) -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "alive"}


def _checks(services: ApiServices) -> dict[str, Any]:
    storage = services.storage
    checks: dict[str, Any] = {}
    try:
        storage.index.counts()
        checks["index"] = "ok"
    except Exception as exc:  # any failure to read the index means not ready; reported, not raised
        checks["index"] = f"unavailable: {type(exc).__name__}"
    checks["spool"] = "ok" if os.access(storage.spool.tmp, os.W_OK) else "not writable"
    checks.update(storage.readiness())  # disk reserve and the index write probe
    checks["scp"] = "ok" if services.scp.listening else "not listening"
    models: dict[str, str] = {}
    for name, error in services.models.status().items():
        models[name] = "ok" if error is None else error
    checks["models"] = models
    if services.pollers is not None:
        # A source in backoff is reported but the node still serves; a stopped one (401/403) needs an operator.
        try:
            checks["sources"] = services.pollers.readiness()
        except (StorageError, sqlite3.Error) as exc:
            checks["sources"] = {"*": f"unavailable: {type(exc).__name__}"}
    return checks


@router.get("/readyz", summary="Readiness: index open and writable, disk above the reserve, spool writable, SCP listening, "
                                  "each model loadable, no source stopped")
def readyz(services: ServicesDep) -> JSONResponse:
    """200 with the checks when all pass, else 503 with the checks and a ``reason`` naming what is not ready."""
    checks = _checks(services)
    ready = (all(v == "ok" for k, v in checks.items() if k not in ("models", "sources"))
             and all(v == "ok" for v in checks["models"].values())
             and not any(v.startswith("stopped") for v in checks.get("sources", {}).values()))
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        body["reason"] = _reason(checks)
    return JSONResponse(body, status_code=200 if ready else 503)


def _reason(checks: dict[str, Any]) -> str:
    """One line naming each failing check, e.g. ``disk: free space ... below the reserve``."""
    failing: list[str] = []
    for name, value in checks.items():
        if isinstance(value, dict):
            failing += [f"{name}.{k}: {v}" for k, v in value.items() if v != "ok" and not (
                name == "sources" and not str(v).startswith("stopped"))]
        elif value != "ok":
            failing.append(f"{name}: {value}")
    return "; ".join(failing)


# Needs api.metrics_scope when keys or JWTs are configured (unless api.metrics_public).
@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(metrics_access)])
def metrics(registry: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
