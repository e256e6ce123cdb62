"""The one bounded inflater (PS3.5 A.5) and the one transfer-syntax table."""

from __future__ import annotations

import io
import zlib

import pytest

from dicom_node.config import ScpConfig
from dicom_node.errors import DecodeError, IdentifierError
from dicom_node.pixels import syntaxes
from dicom_node.pixels.inflate import BoundedInflater, deflate, inflate
from dicom_node.scp.qr_match import decode_dataset


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_inflate_round_trip_and_even_padding() -> None:
    data = bytes(range(256)) * 1000
    packed = deflate(data)
    assert len(packed) % 2 == 0
    assert inflate(packed, len(data)) == data


def test_bomb_refused_after_one_step_of_output() -> None:
    bomb = _raw_deflate(bytes(256 * 1024**2))  # 256 MiB of zeros, ~256 KiB compressed
    reader = BoundedInflater(io.BytesIO(bomb), 4 * 1024**2)
    with pytest.raises(DecodeError, match="beyond the limit of 4194304 bytes"):
        reader.drain()
    assert reader.produced <= 4 * 1024**2 + (1 << 20), "the bound stops the inflate within one step"


def test_reader_hands_out_every_byte_in_small_reads() -> None:
    data = bytes(range(251)) * 20000  # ~5 MiB, several steps
    reader = BoundedInflater(io.BytesIO(_raw_deflate(data)), len(data))
    got = bytearray()
    while chunk := reader.read(7777):
        got += chunk
    assert bytes(got) == data
    assert reader.drain() == len(data)


def test_prefix_then_read_all() -> None:
    data = bytes(range(256)) * 9000
    reader = BoundedInflater(io.BytesIO(_raw_deflate(data)), len(data))
    head = reader.read(1000)
    assert head + reader.read_all() == data


def test_corrupt_and_truncated_streams() -> None:
    with pytest.raises(DecodeError, match="corrupt"):
        inflate(b"\xff" * 64, 1024)
    packed = _raw_deflate(bytes(range(256)) * 100)
    # A stream cut short yields what it inflated to, as zlib's own decompressobj does.
    assert bytes(range(256)) * 100 != inflate(packed[: len(packed) // 2], 1 << 20)


def test_qr_identifier_bomb_is_0xc000() -> None:
    bomb = _raw_deflate(bytes(64 * 1024**2))
    with pytest.raises(IdentifierError) as info:
        decode_dataset(bomb, syntaxes.DEFLATED_EXPLICIT_VR_LE, 1024**2)
    assert info.value.status == 0xC000


def test_scp_default_comes_from_the_table() -> None:
    accepted = ScpConfig().transfer_syntaxes
    assert accepted == list(syntaxes.ACCEPTED_BY_DEFAULT)
    assert set(accepted) == {s.uid for s in syntaxes.SYNTAXES}
    assert accepted[0] == syntaxes.EXPLICIT_VR_LE and accepted[-1] == syntaxes.DEFLATED_EXPLICIT_VR_LE
    assert syntaxes.COMPRESSED_SYNTAXES[-1] == syntaxes.RLE_LOSSLESS
