"""Resolve a session request to a configured source, or refuse it (before any connection).

``{"dicom": {...}}`` names a ``[[sources.remotes]]`` entry either by key
(``"node"``) or by the exact (``server_address``, ``server_port``,
``ae_title``) triple of one; ``{"dicomweb": {...}}`` names a
``[[sources.pollers]]`` entry of kind ``dicomweb``. An address the
configuration does not hold is refused with 403 and never contacted: a REST
caller must not be able to make the node open connections to hosts of its
choosing (SSRF).
"""

from __future__ import annotations

from collections.abc import Mapping

from dicom_node.config import NodeConfig
from dicom_node.config.sources import Poller, RemoteNode
from dicom_node.sources.dicomweb import DicomwebSource
from dicom_node.sources.dimse import DimseSource
from dicom_node.sources.sessions_plan import RetrievalPlan, RetrievalSource, SessionRefused
from dicom_node.sources.sink import NodeStorage
from dicom_node.validators import is_uid

#: The fields of a ``dicom`` or ``dicomweb`` body (``model_dump`` of its schema: text, a port, or absent).
RequestFields = Mapping[str, str | int | None]

#: Query/Retrieve levels from the broadest to the narrowest (PS3.4 C.6.2.1); INSTANCE is read as IMAGE.
_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: The identifier of each level, as the request names it.
_KEYS = {"PATIENT": "patient_id", "STUDY": "study_uid", "SERIES": "series_uid", "IMAGE": "sop_instance_uid"}


def _text(body: RequestFields, key: str) -> str | None:
    """The value of ``key`` as text, None when absent or empty."""
    value = body.get(key)
    return str(value) if value else None


def plan_of(body: RequestFields, allow_patient: bool = True) -> RetrievalPlan:
    """The retrieval plan of a ``dicom`` or ``dicomweb`` body: the narrowest identifier given wins.

    A session retrieves what its narrowest identifier names: an instance
    (``sop_instance_uid``), else a series (``series_uid``), else a study
    (``study_uid``), else the studies of a patient (``patient_id``). A broader
    ``query_level`` does not widen it (``PATIENT`` with a ``series_uid`` retrieves that
    series only); a narrower one needs its identifier (``SERIES`` with only a
    ``study_uid`` is refused). Missing parent UIDs (a series without its study) are
    looked up by the retrieval (:meth:`SessionService.start_retrieval`).

    Raises
    ------
    SessionRefused
        400 ``invalid_request`` naming the invalid or missing identifier.
    """
    given = {key: _text(body, key) for key in _KEYS.values()}
    for key in ("study_uid", "series_uid", "sop_instance_uid"):
        uid = given[key]
        if uid is not None and not is_uid(uid):
            raise SessionRefused(400, "invalid_request", f"{key} is not a valid DICOM UID")
    narrowest = next((lvl for lvl in reversed(_LEVELS) if given[_KEYS[lvl]]), None)
    asked = (_text(body, "query_level") or narrowest or "PATIENT").upper()
    asked = "IMAGE" if asked == "INSTANCE" else asked
    if asked not in _LEVELS:
        raise SessionRefused(400, "invalid_request", f"query_level must be one of {', '.join(_LEVELS)}")
    if narrowest is None or _LEVELS.index(asked) > _LEVELS.index(narrowest):
        raise SessionRefused(400, "invalid_request", f"query_level {asked} needs {_KEYS[asked]}"
                             + (" (or give study_uid)" if asked == "PATIENT" else ""))
    if narrowest == "PATIENT" and not allow_patient:
        raise SessionRefused(400, "invalid_request", "name study_uid (and series_uid) to retrieve")
    return RetrievalPlan(narrowest, given["study_uid"], given["series_uid"],
                         given["patient_id"] if narrowest == "PATIENT" else None, given["sop_instance_uid"])


def resolve_remote(config: NodeConfig, body: RequestFields) -> RemoteNode:
    """The ``[[sources.remotes]]`` entry a ``dicom`` body names.

    Raises
    ------
    SessionRefused
        403 ``not_configured`` for an unknown name or an (address, port, AE title) matching no entry;
        400 when neither is given or they disagree.
    """
    sources = config.sources
    name = _text(body, "node")
    triple = (body.get("server_address"), body.get("server_port"), body.get("ae_title"))
    given = [v is not None and v != "" for v in triple]
    if name:
        remote = sources.remote(name)
        if remote is None:
            raise SessionRefused(403, "not_configured", f"node {str(name)[:64]!r} is not a configured "
                                 "[[sources.remotes]] entry")
        if any(given) and triple != (remote.host, remote.port, remote.ae_title):
            raise SessionRefused(400, "invalid_request", f"server_address/server_port/ae_title disagree with "
                                 f"node {remote.name!r}; give the node name alone")
        return remote
    if not all(given):
        raise SessionRefused(400, "invalid_request", "a dicom session needs node, or server_address, server_port "
                             "and ae_title of a configured remote node")
    for remote in sources.remotes:
        if (remote.host, remote.port, remote.ae_title) == triple:
            return remote
    raise SessionRefused(403, "not_configured", f"{str(triple[0])[:255]}:{triple[1]} AE {str(triple[2])[:16]!r} is "
                         "not a configured remote node ([[sources.remotes]]); only configured nodes are contacted")


def resolve_poller(config: NodeConfig, body: RequestFields) -> Poller:
    """The ``[[sources.pollers]]`` entry of kind ``dicomweb`` a ``dicomweb`` body names.

    Raises
    ------
    SessionRefused
        403 ``not_configured`` for an unknown name, 400 for a DIMSE poller or a missing name.
    """
    name = _text(body, "node")
    if not name:
        raise SessionRefused(400, "invalid_request", "a dicomweb session needs node (a configured [[sources.pollers]] "
                             "entry of kind \"dicomweb\")")
    poller = config.sources.poller(name)
    if poller is None:
        raise SessionRefused(403, "not_configured", f"node {str(name)[:64]!r} is not a configured [[sources.pollers]] entry")
    if poller.kind != "dicomweb":
        raise SessionRefused(400, "invalid_request", f"source {poller.name!r} is a {poller.kind} source; use "
                             "{\"dicom\": {\"node\": ...}} with its remote, or name a dicomweb source")
    return poller


def make_source(entry: RemoteNode | Poller, node: NodeStorage) -> RetrievalSource:
    """The source of a resolved entry: C-GET/C-MOVE from a remote node, or WADO-RS from a DICOMweb poller.

    Parameters
    ----------
    entry : RemoteNode or Poller
        What :func:`resolve_remote` or :func:`resolve_poller` returned.
    node : NodeStorage
        The storage the source stages retrieved instances through.
    """
    if isinstance(entry, RemoteNode):
        return DimseSource(entry, node)
    return DicomwebSource(entry, node)
