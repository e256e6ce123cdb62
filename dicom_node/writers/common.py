"""Helpers the SEG and SR writers share: codes, source headers, serialisation, error wrapping."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code

from dicom_node.errors import WriterError
from inference.spec import Code as SpecCode

__all__ = ["THIRD_PARTY_ERRORS", "from_bytes", "spec_code", "to_bytes", "with_type2_defaults", "wrap_errors"]

#: What highdicom and pydicom raise on bad input; wrapped into WriterError at this boundary.
THIRD_PARTY_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AttributeError, KeyError, IndexError)
#: A tuple built once (mypy does not follow ``*`` unpacking inside an ``except`` clause).
_READ_ERRORS: tuple[type[BaseException], ...] = (InvalidDicomError, EOFError, *THIRD_PARTY_ERRORS)

#: Type 2 Patient/General Study attributes (PS3.3 C.7.1.1, C.7.2.1) highdicom reads from the first source.
_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


def spec_code(code: SpecCode) -> Code:
    """A model-spec code (value, scheme, meaning) as a pydicom ``Code`` (PS3.3 Table 8.8-1)."""
    return Code(code.value, code.scheme, code.meaning)


def with_type2_defaults(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` with absent Type 2 patient/study attributes present and empty.

    Type 2 attributes may be missing from a non-conformant source; the result
    objects must still carry them (empty is conformant), and highdicom reads
    them as plain attributes.
    """
    out = copy.copy(ds)
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


@contextmanager
def wrap_errors(what: str) -> Iterator[None]:
    """Turn highdicom/pydicom input errors inside the block into :class:`WriterError` naming ``what``."""
    try:
        yield
    except WriterError:
        raise
    except THIRD_PARTY_ERRORS as exc:
        raise WriterError(f"{what}: {exc}") from exc


def to_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM Part 10 file (PS3.10 7.1) in memory.

    Raises
    ------
    WriterError
        pydicom cannot encode the dataset.
    """
    buf = io.BytesIO()
    with wrap_errors(f"cannot encode {ds.get('SOPClassUID', 'dataset')!s}"):
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def from_bytes(data: bytes) -> Dataset:
    """Parse a Part 10 file held in memory.

    Raises
    ------
    WriterError
        The bytes are not a readable DICOM file.
    """
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except _READ_ERRORS as exc:
        raise WriterError(f"written object cannot be read back: {exc}") from exc
