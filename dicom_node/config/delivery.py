"""Configuration of result delivery: destinations, retry policy, known peers.

The ``[delivery]`` section of the node configuration (hung off
``NodeConfig.delivery``)::

    [delivery.retry]
    attempts = 10          # total attempts per object and destination
    initial = 30.0         # seconds before the second attempt, doubling
    cap = 600.0

    [[delivery.destinations]]
    kind = "dimse"         # C-STORE, PS3.4 Annex B
    name = "pacs"
    ae_title = "PACS"
    host = "10.1.2.3"
    port = 104

    [[delivery.destinations]]
    kind = "stowrs"        # STOW-RS, PS3.18 10.5
    name = "archive"
    url = "https://pacs.example.org/dicom-web"
    auth = { type = "bearer", token_file = "/run/secrets/pacs-token" }

    [[delivery.destinations]]
    kind = "reply"         # back to the AE that sent the study
    name = "caller"

    [[delivery.destinations]]
    kind = "object"        # a bucket prefix (GCS, Azure Blob, S3) through [objects]
    name = "bucket"
    url = "s3://hospital-results/ai"   # objects land at <url>/<Study>/<Series>/<SOP>.dcm

    [[delivery.known_peers]]
    ae_title = "CT01"
    host = "10.1.5.20"
    port = 104

Peers, HTTP auth, the retry policy and the outbound (SSRF) policy are shared
plumbing in :mod:`dicom_node.net`; this module holds only the delivery section's
own models and checks destination URLs and hosts with the configured policy
(:meth:`dicom_node.net.policy.OutboundPolicy.configured`) at load time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_node.net.auth import HttpAuth, NoAuth
from dicom_node.net.peers import DimsePeer
from dicom_node.net.policy import OutboundPolicy, OutboundRefused
from dicom_node.net.retry import RetryPolicy
from dicom_node.objects.errors import ObjectRefused
from dicom_node.objects.url import ObjectUrl
from dicom_node.validators import check_ae_title, is_loopback

__all__ = [
    "DeliveryConfig", "Destination", "DimseDestination", "KnownPeer", "ObjectDestination", "ReplyToCaller",
    "StowDestination",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

class _Model(BaseModel):
    """Base: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _NamedDestination(_Model):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"destination name {v!r}: use 1-64 letters, digits, '_', '.', '-'")
        return v


class DimseDestination(_NamedDestination, DimsePeer):
    """A C-STORE SCP (PS3.4 Annex B), optionally over TLS (PS3.15 B.1)."""

    kind: Literal["dimse"] = "dimse"
    calling_ae: str = "DICOM_NODE"

    @field_validator("calling_ae")
    @classmethod
    def _calling(cls, v: str) -> str:
        return check_ae_title(v, "AE title")


class StowDestination(_NamedDestination):
    """A DICOMweb origin server taking STOW-RS (PS3.18 10.5); ``url`` is the service root."""

    kind: Literal["stowrs"] = "stowrs"
    url: str
    auth: HttpAuth = Field(default_factory=NoAuth)
    timeout: float = Field(60.0, gt=0, le=3600)
    #: CA bundle for https; None = the system store.
    ca_file: Path | None = None
    #: Instances per STOW-RS request.
    batch_size: int = Field(50, ge=1, le=10000)
    allow_link_local: bool = False
    #: Credentials over plain http are refused except to loopback unless this is set.
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _checks(self) -> StowDestination:
        try:
            self.policy().check_url(self.url)
        except OutboundRefused as exc:
            raise ValueError(str(exc)) from exc
        parts = urlsplit(self.url)
        if (
            parts.scheme == "http" and self.auth.type != "none" and not self.allow_insecure_http
            and not is_loopback(parts.hostname or "")
        ):
            raise ValueError("credentials over plain http are refused; use https or set allow_insecure_http = true")
        return self

    def policy(self) -> OutboundPolicy:
        """The outbound policy of this destination (operator-configured: private ranges allowed)."""
        return OutboundPolicy.configured(self.allow_link_local)


class ReplyToCaller(_NamedDestination):
    """Send results back to the AE that sent the study (C-STORE).

    DICOM carries no return address, so the caller's Storage SCP is found in
    ``[[delivery.known_peers]]`` by calling AE title; a caller not listed there
    gets results at its source host on ``port`` when set, else they are dead-lettered.
    """

    kind: Literal["reply"] = "reply"
    port: int | None = Field(None, ge=1, le=65535)
    #: Calling AE title -> the AE title of that caller's Storage SCP, where they differ.
    ae_titles: dict[str, str] = Field(default_factory=dict)
    calling_ae: str = "DICOM_NODE"
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)

    @field_validator("ae_titles")
    @classmethod
    def _titles(cls, v: dict[str, str]) -> dict[str, str]:
        return {check_ae_title(k, "AE title"): check_ae_title(t, "AE title") for k, t in v.items()}


class ObjectDestination(_NamedDestination):
    """A bucket prefix that result objects are written under (:mod:`dicom_node.delivery.objects`).

    ``url`` is ``gs://bucket/prefix``, ``s3://bucket/prefix`` or ``az://container/prefix``
    (:class:`dicom_node.objects.ObjectUrl`); each object is written to
    ``<prefix>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. The bucket
    must be allowlisted in ``[objects]``, whose store section holds the credentials, so
    a destination names no secret and no endpoint of its own.
    """

    kind: Literal["object"] = "object"
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            ObjectUrl.parse(v)
        except ObjectRefused as exc:  # a malformed URL is a configuration error, named at load
            raise ValueError(str(exc)) from exc
        return v

    def prefix(self) -> ObjectUrl:
        """The parsed prefix the objects are written under."""
        return ObjectUrl.parse(self.url)


class KnownPeer(_Model):
    """Where the Storage SCP of a calling AE title listens."""

    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "AE title")


Destination = Annotated[DimseDestination | StowDestination | ReplyToCaller | ObjectDestination,
                        Field(discriminator="kind")]


class DeliveryConfig(_Model):
    """The ``[delivery]`` section: destinations, retry policy and known peers."""

    destinations: list[Destination] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    known_peers: list[KnownPeer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DeliveryConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        titles = [p.ae_title for p in self.known_peers]
        dupes = sorted({t for t in titles if titles.count(t) > 1})
        if dupes:
            raise ValueError(f"known_peers AE titles must be unique: {', '.join(dupes)}")
        return self
