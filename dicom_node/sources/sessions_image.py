"""The image of a Clara AIAA session: a NIfTI file, DICOM files, or a zip of DICOM files; and back as NIfTI.

AIAA's ``PUT /session/`` takes an image (multipart ``image``: NIfTI or DICOM) or fetches one
(``{"http": {"url", ...}}``: a zip of DICOM files or a NIfTI file); ``GET /session/{id}?image=true``
answers the session's image as an octet stream. Here a NIfTI image is kept as the session
folder's :data:`~dicom_node.sources.sessions.NIFTI_FILE` after :func:`dicom_node.pixels.nifti.read_nifti`
has read it (bounded inflation, voxel count checked on the header), DICOM files go through the
session's sink (every check C-STORE makes), and a DICOM session's series is answered as NIfTI
(``i`` = column, ``j`` = row, ``k`` = slice, RAS affine from the series' LPS geometry, as dcm2niix
and ITK write it).

Zip bounds: at most ``max_members`` entries are read; each is streamed through the sink's
staging writer, which stops at ``scp.max_dataset_bytes``, so a zip bomb inflates no further
than one dataset per member. Member names are never used as paths.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from typing import IO, Literal

import numpy as np

from dicom_node.errors import DecodeError
from dicom_node.pixels import nifti
from dicom_node.pixels.volume import Volume
from dicom_node.sources.sessions_sink import SessionSink

log = logging.getLogger(__name__)

ImageKind = Literal["nifti", "zip", "dicom", "unknown"]
_CHUNK = 1 << 20


def kind_of(head: bytes) -> ImageKind:
    """What the first bytes (at least 348) of an image say it is."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if nifti.is_nifti(head):
        return "nifti"
    return "unknown"


def chunks(fh: IO[bytes]) -> Iterator[bytes]:
    """The file in 1 MiB chunks (what ``SessionSink.store_part10`` streams)."""
    return iter(lambda: fh.read(_CHUNK), b"")


def store_zip(archive: IO[bytes], sink: SessionSink, max_members: int, max_nifti_bytes: int) -> bytes | None:
    """Store the DICOM files of a zip through ``sink``; a zip holding one NIfTI file answers its bytes instead.

    Returns
    -------
    bytes or None
        The NIfTI file of a zip that holds one (``.nii``/``.nii.gz``), else None (DICOM members stored;
        ``sink.stored`` says what each became).

    Raises
    ------
    DecodeError
        Not a readable zip, more than ``max_members`` entries, or a NIfTI member over ``max_nifti_bytes``.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            if len(members) > max_members:
                raise DecodeError(f"the zip holds {len(members)} files, more than {max_members} "
                                  "(api.max_multipart_parts)")
            niftis = [m for m in members if m.filename.lower().endswith((".nii", ".nii.gz"))]
            if niftis:
                if len(members) != 1:
                    raise DecodeError("a zip with a NIfTI file must hold that file alone")
                if niftis[0].file_size > max_nifti_bytes:
                    raise DecodeError(f"the NIfTI file is larger than {max_nifti_bytes} bytes")
                with zf.open(niftis[0]) as fh:
                    data = fh.read(max_nifti_bytes + 1)
                if len(data) > max_nifti_bytes:  # the declared size lied
                    raise DecodeError(f"the NIfTI file is larger than {max_nifti_bytes} bytes")
                return data
            for info in members:
                with zf.open(info) as fh:
                    sink.store_part10(chunks(fh))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise DecodeError(f"the zip cannot be read: {exc}") from exc
    return None


def series_image(volume: Volume) -> bytes:
    """A decoded series as ``.nii.gz``: modality values (int16 when they are whole numbers in range, else float32)."""
    values = volume.array
    whole = bool(np.all(np.isfinite(values))) and bool(np.array_equal(values, np.round(values)))
    fits = whole and values.size > 0 and values.min() >= -32768 and values.max() <= 32767
    return nifti.volume_image(values, volume.affine, np.int16 if fits else np.float32)
