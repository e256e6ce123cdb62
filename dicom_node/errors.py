"""The one exception tree of dicom-node.

Every error the service raises on purpose derives from :class:`DicomNodeError`;
third-party errors are wrapped at the boundary with ``raise ... from exc`` so
callers handle one family and the cause stays in the traceback (for logs, never
for peers)::

    DicomNodeError
    ├── ConfigError                 bad configuration (names the key)
    ├── StorageError                spool or index failure
    │   └── InsufficientSpaceError  free space below the configured reserve
    ├── IngestError                 an incoming instance is refused
    │   ├── DatasetMismatchError    dataset disagrees with the request (PS3.4 0xA900)
    │   └── UnreadableDatasetError  cannot be parsed / bounds exceeded (PS3.4 0xC000 family)
    ├── AssociationError            DICOM upper layer protocol violation
    │   ├── PduError                a PDU that breaks PS3.8, answered with A-ABORT (scp.pdu)
    │   └── MalformedRequest        an A-ASSOCIATE-RQ refused with A-ASSOCIATE-RJ (scp.rq_check)
    ├── IdentifierError             a Q/R identifier is malformed or does not fit (``status``, PS3.4 C.4)
    ├── PixelError                  pixel data cannot be decoded or encoded
    │   ├── UnsupportedTransferSyntaxError
    │   └── DecodeError
    │       └── PixelDataError      declared geometry disagrees with the pixel data, or is over a budget (pixels.declared)
    ├── ValidationError             input fails a model's input contract
    │   ├── ContractViolation       with the validator's issues
    │   └── GeometryError           slices do not form one volume
    ├── WriterError                 a result object (SEG, SR) cannot be built or fails its read-back
    ├── DeliveryError               a result cannot be sent to a destination (``retryable`` says if a retry may help)
    ├── SourceError                 a pull source (DICOMweb server, DIMSE Q/R SCP) cannot answer (``retryable``)
    │   └── HttpSourceError         ... with the HTTP status (sources.dicomweb)
    ├── ModelError                  an ``inference.errors.InferenceError`` wrapped at the boundary (``kind``, ``cause``)
    ├── OutboundError               an outbound HTTP request failed (net.policy)
    │   └── OutboundRefused         ... refused by the SSRF policy before any connection
    ├── ObjectStoreError            an object store (GCS, Azure Blob, S3) request failed (``retryable``; objects.errors)
    │   ├── ObjectRefused           bucket not allowlisted, store not configured, or access denied by the store
    │   ├── ObjectNotFound          the object or its bucket does not exist
    │   └── ObjectTooLarge          over objects.max_object_bytes or the caller's cap (``cap``)
    ├── SessionRefused              a retrieval session cannot be opened (``status``, ``code``; sources.sessions)
    ├── SessionUnavailable          a session is unknown, expired or not ready (sources.sessions)
    ├── AiaaConfigError             a Clara AIAA model config field with no model-spec counterpart (``field``; aiaa.config)
    ├── PointsError                 AIAA clicks or extreme points malformed or outside the image (annotation.guidance)
    ├── PolygonError                AIAA polygons or a vertex edit malformed (annotation.polygons)
    ├── PollCancelled               a poll cycle was stopped (sources.poller)
    ├── MultipartError              a malformed multipart body or one over a limit (``status``; dicomweb.multipart)
    ├── NotFound                    a study, series, instance or frame the node does not hold (404; archive.retrieve)
    ├── BadRequest                  a WADO-RS request naming something impossible, e.g. frame 0 (400; archive.retrieve)
    ├── NotAcceptable               nothing the resource can produce fits the Accept header (406; dicomweb.accept)
    ├── ApiError                    answered to a REST caller with ``status`` and a JSON body (api.errors)
    │   ├── BodyTooLarge            the request body is over ``api.max_body_bytes`` (api.limits)
    │   └── UndecodableUpload       an invocation upload no decoder reads (415; 400 text on /invocations)
    └── InputRejected               one predict/invocation input cannot be used (``code``; api.inputs)

Errors that are not ``DicomNodeError`` and the one place each is mapped:

=====================================  ==========================================================================
``inference.errors.InferenceError``    :mod:`inference` imports nothing from dicom_node, so its root is a plain
                                       ``Exception``. Where dicom_node calls into it, the boundary wraps it with
                                       ``raise ModelError.wrap(exc) from exc``: the model registry
                                       (:mod:`dicom_node.registry`: store, predictors) and the job pipeline's
                                       inference stage. ``ModelError.kind`` comes from :data:`INFERENCE_KINDS`;
                                       the REST routes map ``kind`` to a status (``not_found`` 404,
                                       ``unavailable`` 503). Two callers still see it unwrapped, on purpose: the
                                       REST predict/invocation routes calling ``Predictor.predict`` (per-instance
                                       errors, :func:`dicom_node.api.predictions.run_decoded`; the Clara AIAA
                                       routes of :mod:`dicom_node.api.routers.aiaa_infer` likewise) and the CLI's
                                       ``models``/``infer`` commands, which print it and exit 1.
third-party (pydicom, pynetdicom,      wrapped where they are raised into the nearest class above
sqlite3, requests, OS errors)          (``StorageError``, ``IngestError``, ``SourceError``, ...).
=====================================  ==========================================================================
"""

from __future__ import annotations

from typing import Literal

from inference.errors import (
    BackendError,
    BackendUnavailableError,
    InferenceError,
    InputError,
    ModelNotFoundError,
    ParameterError,
    SpecError,
)

__all__ = [
    "INFERENCE_KINDS", "AssociationError", "ConfigError", "ContractViolation", "DatasetMismatchError", "DecodeError",
    "DeliveryError", "DicomNodeError", "GeometryError", "IdentifierError", "InferenceError", "IngestError",
    "InsufficientSpaceError", "ModelError", "PixelDataError", "PixelError", "SourceError", "StorageError",
    "UnreadableDatasetError", "UnsupportedTransferSyntaxError", "ValidationError", "WriterError",
]


class DicomNodeError(Exception):
    """Root of every error dicom-node raises on purpose."""


class ConfigError(DicomNodeError):
    """The configuration is invalid; the message names the key and the problem."""


class StorageError(DicomNodeError):
    """The spool or the index could not complete an operation."""


class InsufficientSpaceError(StorageError):
    """Free space on the spool volume is below the configured reserve."""


class IngestError(DicomNodeError):
    """An incoming instance is refused; ``status`` is the PS3.4 status to answer."""

    status: int = 0xC000

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class DatasetMismatchError(IngestError):
    """The dataset does not match the SOP Class/Instance of the request (PS3.4 0xA900)."""

    status = 0xA900


class UnreadableDatasetError(IngestError):
    """The dataset cannot be parsed, or exceeds a configured bound (PS3.4 0xC000)."""

    status = 0xC000


class AssociationError(DicomNodeError):
    """The peer violated the DICOM Upper Layer protocol (PS3.8)."""


class PixelError(DicomNodeError):
    """Pixel data cannot be decoded or encoded."""


class UnsupportedTransferSyntaxError(PixelError):
    """No installed decoder or encoder handles this transfer syntax."""


class DecodeError(PixelError):
    """A codec failed on this instance (corrupt stream, codec crash, bad header)."""


class PixelDataError(DecodeError):
    """Declared pixel geometry is impossible, disagrees with the Pixel Data, or is over a budget.

    Raised before any pixel allocation (:mod:`dicom_node.pixels.declared`). The
    message is ``"instance <SOP Instance UID>: <reason>"`` (UIDs are not PHI);
    ``reason`` alone is kept for callers that word their own prefix (a DIMSE status comment).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class ValidationError(DicomNodeError):
    """Input does not satisfy a model's input contract."""


class ContractViolation(ValidationError):
    """A series breaks its model's input contract; ``issues`` are the validator's per-instance findings."""

    def __init__(self, message: str, issues: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.issues = issues


class GeometryError(ValidationError):
    """The slices of a series do not form one volume (PS3.3 C.7.6.2: positions, orientation, sizes)."""


class DeliveryError(DicomNodeError):
    """A result could not be delivered (C-STORE, PS3.4 Annex B; STOW-RS, PS3.18 10.5).

    ``retryable`` is True for transient failures (connection refused, timeouts,
    0xA7xx, HTTP 5xx/408/429) and False for ones a retry cannot fix (bad URL,
    0xA9xx/0xCxxx, HTTP 4xx); the delivery ledger dead-letters the latter at once.
    """

    retryable: bool = False

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class SourceError(DicomNodeError):
    """A pull source could not answer a query or a retrieval (QIDO/WADO-RS, PS3.18; C-FIND/C-GET/C-MOVE, PS3.4 C).

    ``retryable`` is True for transient failures (connection refused, timeouts,
    aborts, A-ASSOCIATE-RJ transient, 0xA7xx, HTTP 429/503/504) and False for
    ones a retry cannot fix (permanent rejection, 0xA9xx/0xCxxx, HTTP 401/403).
    """

    retryable: bool = False

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class WriterError(DicomNodeError):
    """A result object (SEG, PS3.3 A.51; SR, PS3.16 TID 1500) cannot be built, or its read-back check fails."""


class IdentifierError(DicomNodeError):
    """A Q/R identifier cannot be decoded or does not fit the SOP class; ``status`` is the PS3.4 status."""

    def __init__(self, message: str, status: int = 0xA900) -> None:
        super().__init__(message)
        self.status = status


ModelErrorKind = Literal["not_found", "unavailable", "invalid_spec", "input", "parameters", "backend", "inference"]

#: The one mapping of ``inference.errors`` classes into dicom-node (first match wins; subclasses first).
INFERENCE_KINDS: tuple[tuple[type[InferenceError], ModelErrorKind], ...] = (
    (ModelNotFoundError, "not_found"),
    (BackendUnavailableError, "unavailable"),
    (SpecError, "invalid_spec"),
    (InputError, "input"),
    (ParameterError, "parameters"),
    (BackendError, "backend"),
    (InferenceError, "inference"),
)


class ModelError(DicomNodeError):
    """A model cannot be found, loaded or run: an :class:`InferenceError` crossing into dicom-node.

    Raised as ``raise ModelError.wrap(exc) from exc``; the message is the
    original's, ``cause`` is the original and ``kind`` its place in
    :data:`INFERENCE_KINDS`.
    """

    def __init__(self, cause: InferenceError) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.kind: ModelErrorKind = next(kind for cls, kind in INFERENCE_KINDS if isinstance(cause, cls))

    @classmethod
    def wrap(cls, exc: InferenceError) -> ModelError:
        """The wrapper of ``exc`` (raise it ``from exc``)."""
        return cls(exc)
