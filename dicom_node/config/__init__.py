"""One validated configuration object: TOML file plus environment overrides.

Resolution order (later wins): built-in defaults, the TOML file, environment
variables ``DICOM_NODE__<SECTION>__<KEY>`` (for example
``DICOM_NODE__SCP__PORT=11113``). Values from the environment are parsed as
TOML literals when they look like one (numbers, booleans, arrays), else taken as
strings.

Relative paths: a path-valued key written in a config file (``storage.root``,
``inference.models_dir``, TLS ``ca_file``/``cert_file``/``key_file``, secret and
token files, ``api.jwks_file``, ...; every field typed :class:`~pathlib.Path`) is
resolved against the folder holding that file (absolute, ``..`` folded as
:func:`os.path.normpath` does), so a command gives the same answer from any
working directory. Paths from environment overrides and the
built-in defaults (``./var``, ``./engines``) stay relative to the working
directory, as any shell user expects of a value typed on the command line. Any invalid value stops start-up with :class:`~dicom_node.errors.ConfigError`
naming the key, e.g. ``scp.port: Input should be less than or equal to 65535``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dicom_node.config.api import ApiConfig
from dicom_node.config.delivery import DeliveryConfig, ObjectDestination
from dicom_node.config.facade import FacadeConfig
from dicom_node.config.objects import ObjectsConfig
from dicom_node.config.paths import rebase_table
from dicom_node.config.routing import RoutingConfig
from dicom_node.config.sources import SourcesConfig
from dicom_node.config.tls import ScpTlsConfig, parse_subject
from dicom_node.errors import ConfigError
from dicom_node.pixels.syntaxes import ACCEPTED_BY_DEFAULT
from dicom_node.validators import check_ae_title, is_loopback, is_uid
from inference.triton_pool import parse_endpoint

ENV_PREFIX = "DICOM_NODE__"
DEFAULT_CONFIG_NAME = Path("conf") / "node.toml"


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedPeer(_Section):
    """One calling AE title allowed to associate, optionally pinned to source hosts."""

    ae_title: str
    hosts: list[str] = Field(default_factory=list, description="IP addresses or networks (CIDR); empty = any host")
    #: Ties this AE to a client certificate (e.g. "CN=modality1,O=Hospital"): it may only associate
    #: over TLS (scp.tls with ca_certificates) presenting a certificate with exactly this subject.
    certificate_subject: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "ae_title")

    @field_validator("certificate_subject")
    @classmethod
    def _subject(cls, v: str | None) -> str | None:
        if v is not None:
            parse_subject(v)  # raises ValueError naming the bad pair
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            ipaddress.ip_network(host, strict=False)  # raises ValueError naming the bad value
        return v


class ScpConfig(_Section):
    """DIMSE Storage SCP: network, access control, limits and timeouts."""

    ae_title: str = "DICOM_NODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    #: Calling AE titles allowed to associate; empty = any (only allowed on loopback unless allow_any_calling_ae).
    allowed_peers: list[AllowedPeer] = Field(default_factory=list)
    allow_any_calling_ae: bool = False
    #: Reject associations whose Called AE Title is not ours (A-ASSOCIATE-RJ reason 7).
    require_called_ae: bool = True
    max_associations: int = Field(16, ge=1, le=1024)
    #: Largest P-DATA PDU we accept and advertise (PS3.8 D.1); bounded so a peer cannot make us allocate at will.
    max_pdu: int = Field(131072, ge=4096, le=16 * 1024 * 1024)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    #: Default: every syntax the pixel pipeline decodes (:data:`dicom_node.pixels.syntaxes.ACCEPTED_BY_DEFAULT`).
    transfer_syntaxes: list[str] = Field(default_factory=lambda: list(ACCEPTED_BY_DEFAULT))
    #: Upper bound on the inflated size of a Deflated Explicit VR Little Endian dataset.
    max_inflated_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    #: Largest dataset accepted in one C-STORE (bytes on the wire).
    max_dataset_bytes: int = Field(4 * 1024**3, ge=1024 * 1024)
    #: DICOM TLS listener ([scp.tls], :mod:`dicom_node.config.tls`); off unless its port is set.
    tls: ScpTlsConfig = Field(default_factory=ScpTlsConfig)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "ae_title")

    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntaxes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one transfer syntax must be accepted")
        for uid in v:
            if not is_uid(uid):
                raise ValueError(f"{uid!r} is not a UID")
        return v

    @model_validator(mode="after")
    def _open_needs_allowlist(self) -> ScpConfig:
        if not self.allowed_peers and not self.allow_any_calling_ae and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host!r} (not loopback) with an empty allowed_peers list is refused; "
                "list the calling AE titles in [[scp.allowed_peers]] or set allow_any_calling_ae = true"
            )
        return self

    @model_validator(mode="after")
    def _subjects_need_client_certificates(self) -> ScpConfig:
        tied = [p.ae_title for p in self.allowed_peers if p.certificate_subject is not None]
        if tied and self.tls.ca_certificates is None:
            raise ValueError(
                f"allowed_peers {tied} have a certificate_subject, which needs client certificates: "
                "set scp.tls.port, certificate, private_key and ca_certificates"
            )
        return self




class StorageConfig(_Section):
    """Where the spool and the SQLite index live, and how they protect the disk."""

    root: Path = Path("./var")
    #: Refuse new data (0xA700) while free space on the spool volume is below this many bytes.
    min_free_bytes: int = Field(1024**3, ge=0)
    #: What to do when a SOP Instance UID arrives again.
    duplicate_policy: Literal["keep_first", "replace"] = "keep_first"
    #: fsync files, directories and index commits before acknowledging. Only benchmarks turn
    #: this off, to measure the receive path alone; never in production.
    fsync: bool = True
    #: The index database: None keeps the embedded SQLite file under ``root``; a
    #: ``postgresql://user@host/db`` URL puts every table on PostgreSQL (dicom_node.index.pg),
    #: which several nodes can share. The password is better given by PGPASSWORD or ~/.pgpass.
    database: str | None = Field(None, pattern=r"^postgres(ql)?://")
    #: The shared durable copy of the spool and the results: ``s3://bucket/prefix`` (or ``gs://``,
    #: ``az://``), through [objects] (credentials, endpoint; the bucket must be allowlisted there).
    #: An instance is acknowledged only once its object is written and its index row committed; the
    #: local spool is then a cache (dicom_node.spool_objects). None (default): the spool is local only.
    spool_url: str | None = Field(None, pattern=r"^(s3|gs|az)://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[^?#@]*)?$")


class AssemblyConfig(_Section):
    """When a series (and its study) counts as complete."""

    quiet_period: float = Field(10.0, ge=0.0)
    #: A series whose last association was aborted waits this long instead (the sender usually retries).
    abort_grace: float = Field(3600.0, ge=0.0)
    poll_interval: float = Field(0.5, gt=0.0)
    #: Nodes sharing one PostgreSQL database: a node whose heartbeat (renewed every third of this by its
    #: assembler) is older than this is dead, and the associations it held open are counted as aborted.
    node_lease: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _lease_outlasts_polls(self) -> AssemblyConfig:
        if self.node_lease < 3 * self.poll_interval:
            raise ValueError(f"node_lease ({self.node_lease:g} s) must be at least 3 poll intervals "
                             f"({3 * self.poll_interval:g} s): the heartbeat is renewed by the assembly poll")
        return self


class LoggingConfig(_Section):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["keyvalue", "json"] = "keyvalue"


class PixelConfig(_Section):
    """Pixel decoding."""

    #: Worker processes for native codecs; 0 = one per CPU core.
    decode_workers: int = Field(0, ge=0, le=256)
    #: "auto" uses nvImageCodec on a GPU when installed, else the CPU; "cpu" forces the CPU path.
    gpu_decode: Literal["auto", "cpu"] = "auto"
    #: Largest decoded volume (float32 modality values) a job may allocate; a series over it fails
    #: the job with the sizes named, before any pixel is decoded. 0 = no budget (not recommended).
    max_volume_bytes: int = Field(4 * 1024**3, ge=0)


BackendName = Literal["tensorrt", "onnxruntime", "triton"]


def _default_backends() -> list[BackendName]:
    return ["tensorrt", "onnxruntime"]


class InferenceConfig(_Section):
    """Model store and backends."""

    models_dir: Path = Path("./engines")
    #: Backend order when a model's spec states no preference.
    backends: list[BackendName] = Field(default_factory=_default_backends)
    onnxruntime_threads: int = Field(0, ge=0, le=256)
    max_batch_delay_ms: float = Field(5.0, ge=0.0, le=1000.0)
    triton_url: str = ""
    #: More Triton servers (a farm): with triton_url, the only servers the node contacts; a
    #: model.toml [triton] endpoints picks among them. Requests go least-outstanding, with failover.
    triton_urls: list[str] = Field(default_factory=list, max_length=64)
    #: Seconds between health checks of each Triton server; one check call may take triton_probe_timeout_s.
    triton_health_interval_s: float = Field(5.0, ge=0.05, le=3600.0)
    triton_probe_timeout_s: float = Field(2.0, gt=0.0, le=60.0)

    @field_validator("triton_url", "triton_urls")
    @classmethod
    def _triton_endpoints(cls, v: str | list[str]) -> str | list[str]:
        # Refused at start-up rather than as "no backend" on the first job.
        for url in [v] if isinstance(v, str) else v:
            if url:
                parse_endpoint(url)
        return v


class ResultsConfig(_Section):
    """Result objects (SEG, SR): UIDs and series attributes."""

    #: Root for result UIDs; the default is the UUID-derived 2.25 arc (PS3.5 B.2).
    uid_root: str = "2.25."
    #: Unset (the default): each model numbers its own series (``series_number`` in its
    #: model.toml, else derived from its name; SR = SEG + 1). Set: every model's SEG
    #: (SR) series gets this number, and only the description tells models apart.
    seg_series_number: int | None = Field(None, ge=1, le=2**31 - 1)
    #: ``{model}`` and ``{version}`` are replaced, so each model's series is named in a PACS.
    seg_series_description: str = Field("{model} {version} AI segmentation", max_length=64)
    sr_series_number: int | None = Field(None, ge=1, le=2**31 - 1)
    sr_series_description: str = Field("{model} {version} AI measurement report", max_length=64)
    manufacturer: str = Field("dicom-node", max_length=64)
    segmentation_type: Literal["BINARY", "FRACTIONAL"] = "BINARY"
    node_name: str = Field("dicom-node", max_length=64)
    institution_name: str | None = Field(None, max_length=64)

    @field_validator("uid_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", v) or len(v) > 40:
            raise ValueError("must be digits and dots ending with a dot, at most 40 characters (e.g. '1.2.826.0.1.3680043.10.123.')")
        return v

    @field_validator("seg_series_description", "sr_series_description")
    @classmethod
    def _template(cls, v: str) -> str:
        # Checked at start-up rather than at the first job's write stage.
        try:
            v.format(model="m", version="v")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError("only the placeholders {model} and {version} may be used (write {{ and }} for braces)") from exc
        return v


class JobsConfig(_Section):
    """Job execution."""

    workers: int = Field(1, ge=0, le=64)
    #: A job interrupted (crash) this many times ends failed instead of running again.
    max_attempts: int = Field(3, ge=1, le=100)
    poll_interval: float = Field(0.2, gt=0)
    #: Seconds a claimed job (any queued work) is leased, renewed every third of it while its node lives;
    #: a dead node's work is taken by another node (or this one restarted) once the lease runs out.
    lease: float = Field(60.0, ge=1.0, le=3600.0)


class NodeConfig(_Section):
    """The whole configuration of one node."""

    scp: ScpConfig = Field(default_factory=ScpConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    pixels: PixelConfig = Field(default_factory=PixelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    #: Object storage (GCS, Azure Blob, S3) as input and output (:mod:`dicom_node.config.objects`).
    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)
    #: Default buckets of the Triton facade's bucket endpoints (:mod:`dicom_node.config.facade`).
    facade: FacadeConfig = Field(default_factory=FacadeConfig)

    @model_validator(mode="after")
    def _poller_rules_exist(self) -> NodeConfig:
        known = {rule.name for rule in self.routing.rules}
        for poller in self.sources.pollers:
            unknown = [name for name in poller.rules if name not in known]
            if unknown:
                raise ValueError(f"sources.pollers {poller.name!r}: rules {unknown} are not in [[routing.rules]]")
        return self

    @model_validator(mode="after")
    def _buckets_allowlisted(self) -> NodeConfig:
        # An object destination or bucket poller outside the [objects] allowlist would fail every
        # delivery or poll at run time; refused here instead, naming the key that allows it.
        used = [(f"delivery.destinations {d.name!r}", d.url) for d in self.delivery.destinations
                if isinstance(d, ObjectDestination)]
        used += [(f"sources.pollers {p.name!r}", p.url) for p in self.sources.pollers if p.kind == "object"]
        used += [("storage.spool_url", self.storage.spool_url)] if self.storage.spool_url else []
        allowed = {"gs": ("gcs", "allowed_buckets", self.objects.gcs.allowed_buckets),
                   "s3": ("s3", "allowed_buckets", self.objects.s3.allowed_buckets),
                   "az": ("azure", "allowed_containers", self.objects.azure.allowed_containers)}
        for where, url in used:
            scheme, _, rest = url.partition("://")
            bucket = rest.split("/", 1)[0]
            store, key, names = allowed[scheme]
            if bucket not in names:
                raise ValueError(f"{where}: bucket {bucket!r} of {scheme}:// is not in [objects.{store}] {key}")
        return self


def _parse_env_value(raw: str) -> Any:
    """Parse an environment value as a TOML literal when it is one, else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Collect ``DICOM_NODE__SECTION__KEY`` variables into a nested dict."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts)}: conflicting environment overrides ({name})")
        node[parts[-1]] = _parse_env_value(raw)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{key}: {msg}{more}"


def find_config(path: Path | None = None) -> Path | None:
    """Return the config file :func:`load_config` reads, as an absolute path.

    Parameters
    ----------
    path : pathlib.Path, optional
        The file named by ``--config``. Without it, ``conf/node.toml`` in the
        working directory when that file exists.

    Returns
    -------
    pathlib.Path or None
        The file made absolute with ``..`` folded (as :func:`os.path.abspath`;
        symbolic links are kept as named), or None when the built-in defaults apply.
    """
    if path is None:
        if not DEFAULT_CONFIG_NAME.is_file():
            return None
        path = DEFAULT_CONFIG_NAME
    return Path(os.path.abspath(path))


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Load, merge and validate the node configuration.

    Parameters
    ----------
    path : pathlib.Path, optional
        TOML file. Without it, ``conf/node.toml`` in the working directory is
        used when present, else the built-in defaults (see :func:`find_config`).
        Relative paths in the file are resolved against the file's folder;
        those from ``environ`` and the defaults stay relative to the working
        directory (module docstring).
    environ : mapping, optional
        Environment to read overrides from (default: ``os.environ``).

    Returns
    -------
    NodeConfig
        The validated, immutable configuration.

    Raises
    ------
    ConfigError
        With one line naming the bad key and the problem.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is None:
        path = find_config(None)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        data = rebase_table(data, [NodeConfig], Path(os.path.abspath(path)).parent)
    data = _merge(data, _env_overrides(environ))
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from exc
