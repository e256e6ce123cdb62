"""Transfer syntaxes the pixel pipeline knows, and which installed codec handles each.

The table follows PS3.5 Section 8 and Annex A (PS3.6 Table A-1 for the UIDs).
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
    """

    uid: str
    label: str
    lossless: bool
    encapsulated: bool
    gpu: bool = False


#: Every syntax ``decode_instance`` accepts, in the order tables list them.
SYNTAXES: tuple[SyntaxInfo, ...] = (
    SyntaxInfo("1.2.840.10008.1.2", "Implicit VR LE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.1", "Explicit VR LE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.2", "Explicit VR BE", True, False),
    SyntaxInfo("1.2.840.10008.1.2.1.99", "Deflated Explicit VR LE", True, False),
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
