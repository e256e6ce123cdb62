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
    ├── PixelError                  pixel data cannot be decoded or encoded
    │   ├── UnsupportedTransferSyntaxError
    │   └── DecodeError
    ├── ValidationError             input fails a model's input contract
    │   └── GeometryError           slices do not form one volume
    └── InferenceError              (re-exported from ``inference.errors``)
"""

from __future__ import annotations

from inference.errors import InferenceError

__all__ = [
    "AssociationError", "ConfigError", "DatasetMismatchError", "DecodeError", "DicomNodeError", "GeometryError",
    "InferenceError", "IngestError", "InsufficientSpaceError", "PixelError", "StorageError",
    "UnreadableDatasetError", "UnsupportedTransferSyntaxError", "ValidationError",
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


class GeometryError(ValidationError):
    """The slices of a series do not form one volume (PS3.3 C.7.6.2: positions, orientation, sizes)."""
