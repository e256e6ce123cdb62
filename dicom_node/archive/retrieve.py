"""Locate the instances a WADO-RS request names and answer each in a transfer syntax the request accepts.

The offers for an instance are, in order: as stored, Explicit VR Little Endian
(decoded), then the reversible compressed syntaxes :mod:`dicom_node.pixels.transcode`
can encode (the one transcoder). ``transfer-syntax=*`` and ``*/*`` therefore answer
the instance as stored, byte for byte.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dicom_node.dicomweb.accept import MediaRange, NotAcceptable, Offer, choose
from dicom_node.errors import DicomNodeError, PixelError, UnsupportedTransferSyntaxError
from dicom_node.index import instances
from dicom_node.index.store import Index
from dicom_node.pixels.syntaxes import EXPLICIT_VR_LE, require_decoder, syntax_info
from dicom_node.pixels.transcode import DEFAULT_PREFERENCE, choose_target, transcode
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

DICOM = "application/dicom"


#: SOP Class UIDs of structured reports start with this (PS3.4 Annex O): no pixel data to transcode.
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


#: Segmentation Storage: 1-bit frames, which the image codecs do not encode.
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_sr(sop_class_uid: str) -> bool:
    """True for structured report SOP classes (they have no pixel data)."""
    return sop_class_uid.startswith(SR_PREFIX)


class NotFound(DicomNodeError):
    """The study, series, instance or frame is not held by the node (HTTP 404)."""


class BadRequest(DicomNodeError):
    """The request names something impossible, e.g. frame 0 or one past the last (HTTP 400)."""


@dataclass(frozen=True)
class Located:
    """An instance on disk with its identity."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    origin: str


def locate(index: Index, spool: Spool, study: str, series: str | None = None,
           sop: str | None = None) -> list[Located]:
    """The files of a study, series or instance (results and received instances, by :meth:`Spool.local`).

    Raises
    ------
    NotFound
        When nothing matches (the message names the level).
    """
    conn = index.reader()
    try:
        rows = instances.stored_instances(conn, study, series, sop)
    finally:
        conn.close()
    found = [Located(spool.local(r.path, result=r.origin == "result"), r.study_uid, r.series_uid, r.sop_uid,
                     r.sop_class_uid, r.origin) for r in rows]
    found = [f for f in found if f.path.is_file()]
    if not found:
        raise NotFound("no such instance" if sop else "no such series" if series else "no such study")
    return found


def stored_syntax(path: Path) -> str:
    """The Transfer Syntax UID of a PS3.10 file, from its file meta only."""
    try:
        return str(read_file_meta_info(path).TransferSyntaxUID)
    except (InvalidDicomError, AttributeError, OSError) as exc:
        raise PixelError(f"cannot read the file meta of a stored instance: {exc}") from exc


def offers(path: Path, encodable: bool) -> list[Offer]:
    """What the node can answer an instance as: stored, Explicit VR LE, then encodable lossless syntaxes."""
    stored = stored_syntax(path)
    out = [Offer(DICOM, stored, True)]
    try:
        decodable = not syntax_info(stored).encapsulated or _decoder_ready(stored)
    except UnsupportedTransferSyntaxError:
        decodable = False
    if stored != EXPLICIT_VR_LE and decodable:
        out.append(Offer(DICOM, EXPLICIT_VR_LE, True))
    if encodable and decodable:
        probe = Dataset()
        probe.file_meta = pydicom.dataset.FileMetaDataset()
        probe.file_meta.TransferSyntaxUID = pydicom.uid.UID(stored)
        for uid in DEFAULT_PREFERENCE:
            if uid in (stored, EXPLICIT_VR_LE):
                continue
            try:
                choose_target(probe, [uid])
            except UnsupportedTransferSyntaxError:
                continue
            out.append(Offer(DICOM, uid, True))
    return out


def _decoder_ready(uid: str) -> bool:
    try:
        require_decoder(uid)
    except UnsupportedTransferSyntaxError:
        return False
    return True


@dataclass(frozen=True)
class Answer:
    """One instance and the representation chosen for it."""

    located: Located
    offer: Offer
    stored: bool


def negotiate(found: list[Located], accept: list[MediaRange]) -> list[Answer]:
    """Choose a representation for every instance before anything is sent.

    Raises
    ------
    NotAcceptable
        When some instance cannot be answered in anything acceptable (the reason names it).
    """
    answers = []
    for item in found:
        # No compressed targets for SRs (no pixels) and SEGs (1-bit pixels no lossless codec takes).
        choices = offers(item.path, not is_sr(item.sop_class_uid) and item.sop_class_uid != SEG_CLASS)
        try:
            offer = choose(accept, choices)
        except NotAcceptable as exc:
            raise NotAcceptable(f"instance {item.sop_uid}: {exc.reason}") from None
        answers.append(Answer(item, offer, offer == choices[0]))
    return answers


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def encode(answer: Answer) -> tuple[int, Iterator[bytes]]:
    """The bytes of one answered instance: the file as stored, or transcoded in memory.

    Raises
    ------
    PixelError
        Transcoding failed (the router answers 500 before the body only for the first instance; later
        ones end the stream, which the client sees as a truncated message).
    """
    path = answer.located.path
    if answer.stored:
        return path.stat().st_size, _file_chunks(path)
    target = answer.offer.transfer_syntax or EXPLICIT_VR_LE
    ds = pydicom.dcmread(path)
    out = transcode(ds, [target], preference=(target,))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    data = buf.getvalue()
    return len(data), iter((data,))
