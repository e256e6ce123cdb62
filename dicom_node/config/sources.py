"""The ``[sources]`` section: remote DIMSE nodes (query/retrieve) and pollers.

::

    [[sources.remotes]]          # a PACS answering C-FIND and C-GET / C-MOVE
    name = "pacs"
    ae_title = "PACS"
    host = "10.1.2.3"
    port = 104
    retrieve = "c-move"          # or "c-get"
    move_destination = "DICOM_NODE"   # our AE title as the remote knows it

    [[sources.pollers]]          # poll a DICOMweb server (QIDO-RS + WADO-RS)
    name = "orthanc"
    kind = "dicomweb"
    url = "https://pacs.example.org/dicom-web"
    auth = { type = "bearer", token_file = "/run/secrets/pacs-token" }
    modalities = ["CT"]
    study_date_days = 2          # StudyDate within the last 2 days; 0 = no date filter
    filters = { InstitutionName = "General*" }
    interval = 60.0

    [[sources.pollers]]          # poll a DIMSE-only PACS (C-FIND + C-GET/C-MOVE)
    name = "old-pacs"
    kind = "dimse"
    remote = "pacs"

    [[sources.pollers]]          # poll a bucket prefix for new DICOM files (GCS, Azure Blob, S3)
    name = "uploads"
    kind = "object"
    url = "s3://hospital-inputs/incoming"   # the bucket must be allowlisted in [objects]
    settle = 30.0                # a folder is read once its listing stayed unchanged this long

Outbound hosts and URLs pass the same SSRF checks as delivery destinations
(:class:`dicom_node.net.policy.OutboundPolicy`). An ``object`` poller's URL is a
bucket prefix (:class:`dicom_node.objects.ObjectUrl`): its store's endpoint,
credentials and bucket allowlist are the ``[objects]`` section's, so the poller
itself carries no credential.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_node.net.auth import HttpAuth, NoAuth
from dicom_node.net.peers import DimsePeer
from dicom_node.net.policy import OutboundPolicy, OutboundRefused
from dicom_node.objects.errors import ObjectRefused
from dicom_node.objects.url import ObjectUrl
from dicom_node.validators import check_ae_title, is_loopback

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}")
#: DICOM keywords a QIDO/C-FIND filter may name (letters only, as in PS3.6).
_KEYWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(v: str) -> str:
    if not _NAME_RE.fullmatch(v):
        raise ValueError(f"name {v!r}: use 1-16 letters, digits, '_', '.', '-' (it is recorded as the calling AE)")
    return v


class RemoteNode(DimsePeer):
    """A DICOM node the node may query and retrieve from (PS3.4 Annex C)."""

    name: str
    #: Our calling AE title towards this node; empty = ``scp.ae_title``.
    calling_ae: str = ""
    #: How instances come back: C-GET on the same association, or C-MOVE to our own SCP.
    retrieve: Literal["c-get", "c-move"] = "c-get"
    #: Move destination for C-MOVE (our AE title as configured on the remote); empty = ``scp.ae_title``.
    move_destination: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("calling_ae", "move_destination")
    @classmethod
    def _optional_ae(cls, v: str) -> str:
        return check_ae_title(v, "AE title") if v else v


class Poller(_Model):
    """One polled source: which studies to look for, how often, and where to fetch them."""

    name: str
    kind: Literal["dicomweb", "dimse", "object"]
    #: DICOMweb service root (kind = "dicomweb"), or the bucket prefix polled (kind = "object").
    url: str = ""
    auth: HttpAuth = Field(default_factory=NoAuth)
    ca_file: Path | None = None
    timeout: float = Field(60.0, gt=0, le=3600)
    allow_link_local: bool = False
    allow_insecure_http: bool = False
    #: Name of a ``[[sources.remotes]]`` entry (kind = "dimse").
    remote: str = ""
    #: ModalitiesInStudy filter; empty = any.
    modalities: list[str] = Field(default_factory=list)
    #: Only studies whose StudyDate lies within this many days before today; 0 = no date filter.
    study_date_days: int = Field(0, ge=0, le=36500)
    #: Any other matching keys, by DICOM keyword (wildcards as PS3.4 C.2.2.2.4 allows).
    filters: dict[str, str] = Field(default_factory=dict)
    #: Extra attributes QIDO-RS should return (includefield).
    includefield: list[str] = Field(default_factory=list)
    interval: float = Field(60.0, ge=1.0)
    page_size: int = Field(100, ge=1, le=10000)
    max_studies: int = Field(50, ge=1, le=100000)
    #: Routing rules (by name) applied to what this source brings in; empty = all rules.
    rules: list[str] = Field(default_factory=list)
    enabled: bool = True
    #: Backoff after a failed poll (HTTP 429/503/504, connection errors): first wait, doubling up to backoff_max;
    #: a longer Retry-After from the server wins (capped at backoff_max).
    backoff_initial: float = Field(5.0, gt=0, le=3600)
    backoff_max: float = Field(900.0, gt=0, le=86400)
    #: kind = "object": seconds a folder's listing must stay unchanged before its new objects are read
    #: (a series still being uploaded waits); 0 = read new objects at first sight.
    settle: float = Field(30.0, ge=0, le=86400)
    #: kind = "object": objects listed per poll at most (also bounded by objects.max_list_items).
    max_objects: int = Field(10_000, ge=1, le=10_000_000)
    #: kind = "object": objects downloaded at once.
    concurrency: int = Field(4, ge=1, le=64)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("filters", mode="after")
    @classmethod
    def _filters(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _KEYWORD_RE.fullmatch(key):
                raise ValueError(f"filter key {key!r} is not a DICOM keyword")
        return v

    @field_validator("includefield", mode="after")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        for key in v:
            if not (_KEYWORD_RE.fullmatch(key) or re.fullmatch(r"[0-9A-Fa-f]{8}", key) or key == "all"):
                raise ValueError(f"includefield {key!r} is not a DICOM keyword or tag")
        return v

    @model_validator(mode="after")
    def _kind(self) -> Poller:
        if self.kind == "dicomweb":
            if not self.url:
                raise ValueError("a dicomweb poller needs url")
            try:
                parts = OutboundPolicy.configured(self.allow_link_local).check_url(self.url)
            except OutboundRefused as exc:
                raise ValueError(str(exc)) from exc
            if (parts.scheme == "http" and self.auth.type != "none" and not self.allow_insecure_http
                    and not is_loopback(parts.hostname or "")):
                raise ValueError("credentials over plain http are refused; use https or set allow_insecure_http = true")
        elif self.kind == "object":
            try:
                ObjectUrl.parse(self.url)
            except ObjectRefused as exc:
                raise ValueError(f"an object poller needs url = a bucket prefix: {exc}") from exc
            if self.auth.type != "none":
                raise ValueError("an object poller takes its credentials from [objects], not auth")
        elif not self.remote:
            raise ValueError("a dimse poller needs remote (the name of a [[sources.remotes]] entry)")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must not be smaller than backoff_initial")
        return self


class SourcesConfig(_Model):
    """The ``[sources]`` section."""

    remotes: list[RemoteNode] = Field(default_factory=list)
    pollers: list[Poller] = Field(default_factory=list)
    #: Retrieval sessions (``PUT /v1/sessions``): default and largest expiry, in seconds.
    session_expiry: float = Field(3600.0, gt=0)
    max_session_expiry: float = Field(86400.0, gt=0)

    @model_validator(mode="after")
    def _refs(self) -> SourcesConfig:
        names = [r.name for r in self.remotes]
        if len(set(names)) != len(names):
            raise ValueError("remote names must be unique")
        pollers = [p.name for p in self.pollers]
        if len(set(pollers)) != len(pollers):
            raise ValueError("poller names must be unique")
        for poller in self.pollers:
            if poller.kind == "dimse" and poller.remote not in names:
                raise ValueError(f"poller {poller.name!r} names remote {poller.remote!r}, which is not in [[sources.remotes]]")
        return self

    def remote(self, name: str) -> RemoteNode | None:
        """The remote node called ``name``, or None."""
        return next((r for r in self.remotes if r.name == name), None)

    def poller(self, name: str) -> Poller | None:
        """The poller called ``name``, or None."""
        return next((p for p in self.pollers if p.name == name), None)
