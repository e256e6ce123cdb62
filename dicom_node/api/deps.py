"""Typed FastAPI dependencies: what a route may use of the node, one service each.

The application holds one :class:`ApiServices` (built from the node by
:meth:`ApiServices.of`); a route names the services it uses as parameters
annotated with the aliases below (``storage: StorageDep``) and never sees the node
itself. The dependencies read only the request, so they add nothing to the
OpenAPI schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry

from dicom_node.api.errors import ApiError
from dicom_node.api.metrics import registry_for
from dicom_node.api.webhooks import invocation_service
from dicom_node.config import NodeConfig
from dicom_node.invocations import InvocationService
from dicom_node.net.http import Outbound
from dicom_node.node import Node
from dicom_node.objects import ObjectStores
from dicom_node.registry import ModelRegistry
from dicom_node.scp.server import StorageServer
from dicom_node.services import Storage
from dicom_node.sources.poller import PollerService
from dicom_node.sources.sessions import SessionService
from dicom_node.sources.sink import NodeStorage


@dataclass(frozen=True)
class ApiServices:
    """The services the REST API hands to its routes.

    Attributes
    ----------
    storage : Storage
        Spool, index, writer and ingestor (STOW-RS, WADO-RS, jobs, results, worklist).
    models : ModelRegistry
        Model store and shared predictors (models, predict, invocations, ``/readyz``).
    scp : StorageServer
        The DIMSE server: ``/readyz`` asks whether it listens; STOW-RS counts into its metrics.
    pollers : PollerService or None
        The pull sources when any is configured (``/readyz``).
    sessions : SessionService
        Retrieval sessions (``/v1/sessions``, session inputs of predict).
    invocations : InvocationService
        Queued invocations and their webhooks (``/v1/invocations``).
    pull : NodeStorage
        What a pull source of a retrieval session writes through (``sources.sink.NodeStorage``).
    outbound : Outbound
        The HTTP client and SSRF policy for caller-supplied URLs (``dicomweb_uri``, ``Webhook-Url``).
    metrics : CollectorRegistry
        What ``/metrics`` exposes.
    objects : ObjectStores
        Object storage (``gs://``, ``s3://``, ``az://``) for bucket inputs and object outputs.
    """

    storage: Storage
    models: ModelRegistry
    scp: StorageServer
    pollers: PollerService | None
    sessions: SessionService
    invocations: InvocationService
    pull: NodeStorage
    outbound: Outbound
    metrics: CollectorRegistry
    objects: ObjectStores

    @classmethod
    def of(cls, node: Node) -> ApiServices:
        """The services of ``node`` (the invocation service is built here, not started)."""
        return cls(
            storage=node.storage,
            models=node.models,
            scp=node.scp,
            pollers=node.pollers,
            sessions=node.sessions,
            invocations=invocation_service(node),
            pull=node,
            outbound=node.outbound,
            metrics=registry_for(node.scp, node.index, node.models),
            objects=node.objects,
        )


def app_config(request: Request) -> NodeConfig:
    """The node's configuration (present even on a schema-only application)."""
    config = request.app.state.config
    if not isinstance(config, NodeConfig):  # pragma: no cover - create_app always sets it
        raise ApiError(500, "internal_error", "the application has no configuration")
    return config


async def settings(request: Request) -> NodeConfig:
    """The node's configuration, as a dependency."""
    return app_config(request)


async def services(request: Request) -> ApiServices:
    """The application's services; 503 on an application built only to render its schema."""
    found = request.app.state.services
    if not isinstance(found, ApiServices):
        raise ApiError(503, "unavailable", "this application serves no node")
    return found


# The providers below are ``async def`` although they only read attributes: FastAPI runs a plain
# ``def`` dependency in its thread pool, a hop per dependency per request (measured: one client's
# 512x512 PNG predict took 6.2 ms a request with them as ``def``, 5.5 ms as ``async def``).
ConfigDep = Annotated[NodeConfig, Depends(settings)]
ServicesDep = Annotated[ApiServices, Depends(services)]


async def storage(found: ServicesDep) -> Storage:
    """Spool, index, writer and ingestor."""
    return found.storage


async def models(found: ServicesDep) -> ModelRegistry:
    """The model registry."""
    return found.models


async def scp(found: ServicesDep) -> StorageServer:
    """The DIMSE server."""
    return found.scp


async def pollers(found: ServicesDep) -> PollerService | None:
    """The pull sources, or None when none is configured."""
    return found.pollers


async def outbound(found: ServicesDep) -> Outbound:
    """The outbound HTTP service for caller-supplied URLs."""
    return found.outbound


async def objects(found: ServicesDep) -> ObjectStores:
    """Object storage (GCS, Azure Blob, S3)."""
    return found.objects


async def metrics(found: ServicesDep) -> CollectorRegistry:
    """The Prometheus registry of ``/metrics``."""
    return found.metrics


StorageDep = Annotated[Storage, Depends(storage)]
ModelsDep = Annotated[ModelRegistry, Depends(models)]
ScpDep = Annotated[StorageServer, Depends(scp)]
PollersDep = Annotated[PollerService | None, Depends(pollers)]
MetricsDep = Annotated[CollectorRegistry, Depends(metrics)]
OutboundDep = Annotated[Outbound, Depends(outbound)]
ObjectStoresDep = Annotated[ObjectStores, Depends(objects)]


async def session_reader(found: ServicesDep) -> SessionService:
    """The retrieval session service, not started: reading a ready session needs no thread."""
    return found.sessions


async def sessions(found: ServicesDep) -> SessionService:
    """The retrieval session service, started on first use when the node did not start it."""
    await run_in_threadpool(found.sessions.start)
    return found.sessions


async def invocations(found: ServicesDep) -> InvocationService:
    """The invocation service, started on first use (idempotent; the API front end starts it at boot)."""
    await run_in_threadpool(found.invocations.start)
    return found.invocations


SessionsDep = Annotated[SessionService, Depends(sessions)]
SessionReaderDep = Annotated[SessionService, Depends(session_reader)]
InvocationsDep = Annotated[InvocationService, Depends(invocations)]
