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
    ├── IdentifierError             a Q/R identifier is malformed or does not fit (``status``, PS3.4 C.4)
    ├── PixelError                  pixel data cannot be decoded or encoded
    │   ├── UnsupportedTransferSyntaxError
    │   └── DecodeError
    ├── ValidationError             input fails a model's input contract
    │   ├── ContractViolation       with the validator's issues
    │   └── GeometryError           slices do not form one volume
    ├── WriterError                 a result object (SEG, SR) cannot be built or fails its read-back
    ├── DeliveryError               a result cannot be sent to a destination (``retryable`` says if a retry may help)
    ├── SourceError                 a pull source (DICOMweb server, DIMSE Q/R SCP) cannot answer (``retryable``)
    └── InferenceError              (re-exported from ``inference.errors``)
"""

from __future__ import annotations

from inference.errors import InferenceError

__all__ = [
    "AssociationError", "ConfigError", "ContractViolation", "DatasetMismatchError", "DecodeError", "DeliveryError",
    "DicomNodeError", "GeometryError", "IdentifierError",
    "InferenceError", "IngestError", "InsufficientSpaceError", "PixelError", "SourceError", "StorageError",
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
