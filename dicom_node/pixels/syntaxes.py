"""The node's one transfer-syntax table, and which installed codec handles each syntax.

The table follows PS3.5 Section 8 and Annex A (PS3.6 Table A-1 for the UIDs).
Every other list of syntaxes in the node is derived from it: the SCP's default
``scp.transfer_syntaxes`` (:data:`ACCEPTED_BY_DEFAULT`) and the syntaxes a
DICOMweb poller asks for. It imports nothing of the node but :mod:`dicom_node.errors`,
so the config package may use it.
Codec availability is asked of pydicom's lazy decoder/encoder registries
(:func:`pydicom.pixels.get_decoder`), which import a plugin only when asked;
nothing here imports a codec at module import time.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from dicom_node.errors import UnsupportedTransferSyntaxError


@dataclass(frozen=True)
class SyntaxInfo:
    """What the pipeline knows about one transfer syntax (PS3.5 Annex A).

    Attributes
    ----------
    uid : str
        The Transfer Syntax UID.
    label : str
        Short name used in tables and logs.
    lossless : bool
        True when the encoding is reversible, so decoded values must equal the
        original stored values exactly (PS3.5 8.2 and 8.2.4 for JPEG-LS, where
        NEAR = 0 only for 1.2.840.10008.1.2.4.80).
    encapsulated : bool
        True when Pixel Data is encapsulated in fragments (PS3.5 A.4).
    gpu : bool
        True when nvImageCodec can decode its frames on a GPU (JPEG, JPEG 2000, HTJ2K).
    deflated : bool
        True when the whole dataset is a raw DEFLATE stream (PS3.5 A.5), inflated
        with a bound by :mod:`dicom_node.pixels.inflate`.
    """

    uid: str
    label: str
    lossless: bool
    encapsulated: bool
    gpu: bool = False
    deflated: bool = False


#: Every syntax ``decode_instance`` accepts, in the order tables list them.
SYNTAXES: tuple[SyntaxInfo, ...] = (
    SyntaxInfo("1.2.840.10008.1.2", "Implicit VR LE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.1", "Explicit VR LE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.2", "Explicit VR BE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.1.99", "Deflated Explicit VR LE", True, False, deflated=True),
    SyntaxInfo("1.2.840.10008.1.2.5", "RLE Lossless", True, True),
    SyntaxInfo("1.2.840.10008.1.2.4.50", "JPEG Baseline", False, True, gpu=True),
    # 12-bit and lossless JPEG support in nvJPEG depends on the CUDA release; the CPU path is exact.
    SyntaxInfo("1.2.840.10008.1.2.4.51", "JPEG Extended", False, True),
    SyntaxInfo("1.2.840.10008.1.2.4.57", "JPEG Lossless P14", True, True),
    SyntaxInfo("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", True, True),
    SyntaxInfo("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", True, True),
    SyntaxInfo("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", False, True),
    SyntaxInfo("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", True, True, gpu=True),
    SyntaxInfo("1.2.840.10008.1.2.4.91", "JPEG 2000", False, True, gpu=True),
    SyntaxInfo("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", True, True, gpu=True),
    SyntaxInfo("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", True, True, gpu=True),
    SyntaxInfo("1.2.840.10008.1.2.4.203", "HTJ2K", False, True, gpu=True),
)

_BY_UID: dict[str, SyntaxInfo] = {s.uid: s for s in SYNTAXES}

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Native (uncompressed, not deflated) syntaxes, Explicit VR Little Endian first: it is the
#: one every DICOMweb origin server must support (PS3.18 8.7.3.5.2) and the preferred one.
UNCOMPRESSED_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LE,) + tuple(
    s.uid for s in SYNTAXES if not s.encapsulated and not s.deflated and s.uid != EXPLICIT_VR_LE
)
#: Encapsulated syntaxes, image codecs first and RLE last: RLE compresses CT and MR poorly,
#: so a server that would transcode for us should pick a real codec before it.
COMPRESSED_SYNTAXES: tuple[str, ...] = tuple(
    s.uid for s in SYNTAXES if s.encapsulated and s.uid != RLE_LOSSLESS
) + (RLE_LOSSLESS,)
#: Deflated syntaxes (only Deflated Explicit VR Little Endian).
DEFLATED_SYNTAXES: tuple[str, ...] = tuple(s.uid for s in SYNTAXES if s.deflated)
#: What the Storage SCP accepts unless ``scp.transfer_syntaxes`` says otherwise: every syntax
#: the pixel pipeline decodes (the same set as :data:`SYNTAXES`, in preference order).
ACCEPTED_BY_DEFAULT: tuple[str, ...] = UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES + DEFLATED_SYNTAXES


def syntax_info(uid: str) -> SyntaxInfo:
    """Return the table entry for ``uid``.

    Parameters
    ----------
    uid : str
        A Transfer Syntax UID (PS3.5 Annex A).

    Returns
    -------
    SyntaxInfo
        The entry.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When the pipeline does not handle the syntax at all (for example JPIP
        referenced or MPEG video syntaxes), naming the UID.
    """
    try:
        return _BY_UID[str(uid)]
    except KeyError:
        name = UID(str(uid)).name
        raise UnsupportedTransferSyntaxError(
            f"transfer syntax {uid} ({name}) is not supported for pixel decoding"
        ) from None


def require_decoder(uid: str) -> None:
    """Check that an installed pydicom pixel backend decodes ``uid``.

    Parameters
    ----------
    uid : str
        A Transfer Syntax UID.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When the syntax is unknown or no plugin for it is installed; the message
        names the missing dependencies as pydicom's registry reports them.
    """
    info = syntax_info(uid)
    from pydicom.pixels import get_decoder

    decoder = get_decoder(UID(info.uid))
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise UnsupportedTransferSyntaxError(
            f"no installed decoder for {info.label} ({info.uid}); missing: {missing}"
        )


def decoder_plugins(uid: str) -> tuple[str, ...]:
    """Return the names of the installed pydicom plugins able to decode ``uid``.

    Parameters
    ----------
    uid : str
        A Transfer Syntax UID.

    Returns
    -------
    tuple of str
        For example ``("pylibjpeg",)``; empty for native (uncompressed) syntaxes,
        which pydicom decodes with NumPy alone.
    """
    from pydicom.pixels import get_decoder

    return tuple(get_decoder(UID(syntax_info(uid).uid)).available_plugins)
