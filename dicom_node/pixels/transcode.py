"""Outgoing transcoding: re-encode a dataset to a transfer syntax the destination accepted.

Only reversible targets are chosen (PS3.5 8.2: JPEG-LS lossless, JPEG 2000
lossless, RLE Lossless, then the native syntaxes), so transcoding never adds
loss; decoded values after a round trip equal the values before it. Encoders
come from pydicom's lazy encoder registry (pylibjpeg-openjpeg, pyjpegls,
pylibjpeg-rle or pydicom's own RLE); a target whose encoder is not installed is
skipped, and when nothing accepted can be produced the error lists what was offered.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicom_node.errors import PixelError, UnsupportedTransferSyntaxError
from dicom_node.pixels.decode import decode_instance, describe, transfer_syntax_of
from dicom_node.pixels.syntaxes import SYNTAXES, require_decoder, syntax_info

log = logging.getLogger(__name__)

#: Preferred targets, smallest lossless encodings first (PS3.5 A.4.3-A.4.4, A.4.2, A.2).
DEFAULT_PREFERENCE: tuple[str, ...] = (
    str(JPEGLSLossless),
    str(JPEG2000Lossless),
    str(RLELossless),
    str(ExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
)

#: Syntaxes whose pixel data is not encapsulated: no encoder is needed to write them.
_NATIVE = frozenset(s.uid for s in SYNTAXES if not s.encapsulated)


def _encoder_ready(uid: str, ds: Dataset) -> bool:
    """True when an installed encoder can encode ``ds`` as ``uid`` (pydicom's registry)."""
    if uid in _NATIVE:
        return True
    from pydicom.pixels import get_encoder

    try:
        encoder = get_encoder(UID(uid))
    except NotImplementedError:
        return False
    return bool(encoder.is_available)


def choose_target(ds: Dataset, accepted: Iterable[str], preference: Sequence[str] = DEFAULT_PREFERENCE) -> str:
    """Pick the transfer syntax to send ``ds`` in.

    Returns the current syntax when the destination accepts it, else the first
    reversible syntax in ``preference`` that was accepted and can be encoded.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When no accepted syntax can be produced; the message lists them.
    """
    accepted = [str(a) for a in accepted]
    current = transfer_syntax_of(ds)
    if current in accepted:
        return current
    for uid in preference:
        if uid in accepted and _encoder_ready(uid, ds):
            return uid
    raise UnsupportedTransferSyntaxError(
        f"{describe(ds)}: cannot transcode {current} to any accepted syntax ({', '.join(accepted) or 'none'}); "
        "only reversible targets with an installed encoder are used"
    )


def transcode(ds: Dataset, accepted_syntaxes: Iterable[str], *, preference: Sequence[str] = DEFAULT_PREFERENCE) -> Dataset:
    """Return ``ds`` encoded in a transfer syntax the destination accepted.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance, with file meta.
    accepted_syntaxes : iterable of str
        Transfer Syntax UIDs the peer accepted for this SOP Class (PS3.8 presentation contexts).
    preference : sequence of str
        Order of reversible targets to try.

    Returns
    -------
    pydicom.dataset.Dataset
        ``ds`` itself when its syntax is accepted, else a re-encoded copy.

    Raises
    ------
    UnsupportedTransferSyntaxError
        Nothing accepted can be produced.
    PixelError
        Decoding the source or encoding the target failed.
    """
    target = choose_target(ds, accepted_syntaxes, preference)
    current = transfer_syntax_of(ds)
    if target == current:
        return ds
    out = copy.deepcopy(ds)
    try:
        if syntax_info(current).encapsulated:
            require_decoder(current)
            out.decompress(generate_instance_uid=False)
        elif current == str(ExplicitVRBigEndian):
            # pydicom keeps big-endian OW bytes as read; re-set them from decoded values in little endian.
            arr = decode_instance(ds)
            arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
            out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out.set_original_encoding(False, True)
            out.set_pixel_data(arr, str(ds.PhotometricInterpretation), int(ds.BitsStored), generate_instance_uid=False)
        if target in _NATIVE:
            out.file_meta.TransferSyntaxUID = UID(target)
            out.set_original_encoding(target == str(ImplicitVRLittleEndian), target != str(ExplicitVRBigEndian))
        else:
            out.compress(UID(target), generate_instance_uid=False)
    except PixelError:
        raise
    except Exception as exc:  # encoders raise ValueError/RuntimeError/...: wrapped at the boundary
        raise PixelError(f"{describe(ds)}: transcoding {syntax_info(current).label} -> {syntax_info(target).label} failed: {exc}") from exc
    log.info("transcoded %s: %s -> %s", describe(ds), syntax_info(current).label, syntax_info(target).label)
    return out
