"""The one multipart/related reader and writer (dicomweb/multipart.py) and part staging (staging.py)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    boundary_of,
    media_type,
    new_boundary,
    related_content_type,
    split,
    write_related,
)
from dicom_node.spool import Spool
from dicom_node.staging import Part10Reader, PartWriter, parse_meta
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.receiver import multipart_related


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    return multipart_related(parts, boundary)


class _Collect:
    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers, self.body = dict(headers), bytearray()

    def feed(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> tuple[dict[str, str], bytes]:
        return self.headers, bytes(self.body)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_multipart_reader_splits_any_chunking(tmp_path: Path, chunk: int) -> None:
    spool = Spool(tmp_path, fsync=False)
    datasets = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="chunks")))
    body, ctype = multipart([encode(d) for d in datasets], boundary=uuid.uuid4().hex)
    reader = Part10Reader(boundary_of(ctype), spool, 10, 1 << 30)
    for k in range(0, len(body), chunk):
        reader.feed(body[k:k + chunk])
    reader.close()
    parts = reader.take()
    assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in datasets]
    for part, ds in zip(parts, datasets, strict=False):
        assert part.failure is None and part.temp is not None
        back = pydicom.dcmread(part.temp)
        assert back.file_meta.SourceApplicationEntityTitle == "STOW-RS"
        np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
        spool.discard(part.fd, part.temp)


def test_parse_meta_and_boundary_edge_cases(tmp_path: Path) -> None:
    raw = encode(next(iter(ct_datasets(SeriesSpec(slices=1, rows=8, columns=8, seed="m")))))
    assert parse_meta(raw[:100]) is None and parse_meta(raw[:140]) is None
    meta, offset = parse_meta(raw)
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.1" and raw[offset:offset + 2] == b"\x08\x00"
    with pytest.raises(ValueError):
        parse_meta(b"\x01" * 200)
    with pytest.raises(MultipartError):
        boundary_of('multipart/related; type="application/dicom+json"; boundary=x')
    with pytest.raises(MultipartError):
        boundary_of("multipart/related; type=application/dicom")
    writer = PartWriter(Spool(tmp_path, fsync=False), 1 << 20, "image/png")
    writer.feed(raw)
    assert writer.finish().failure[0] == 0xC000


def test_content_type_parsing() -> None:
    main, params = media_type('Multipart/Related; type="application/dicom"; boundary="a;b"; start="<x>"')
    assert main == "multipart/related" and params == {"type": "application/dicom", "boundary": "a;b", "start": "<x>"}
    assert boundary_of('multipart/related; boundary="q b"') == "q b"
    with pytest.raises(MultipartError) as info:
        boundary_of("application/dicom")
    assert info.value.status == 415
    with pytest.raises(MultipartError) as info:
        boundary_of("multipart/related; boundary=" + "x" * 201)
    assert info.value.status == 400


def test_preamble_epilogue_and_headers() -> None:
    body = (b"this is a preamble\r\n--bb\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
            b"Content-Length: 3\r\n\r\nabc\r\n--bb\r\n\r\n\r\n--bb--\r\nand an epilogue")
    assert split(body, "bb", 10) == [
        ({"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "content-length": "3"}, b"abc"),
        ({}, b""),
    ]


def test_limits_and_errors() -> None:
    three = b"".join(b"--bb\r\n\r\nx\r\n" for _ in range(3)) + b"--bb--\r\n"
    with pytest.raises(MultipartError, match="more than 2 parts") as info:
        split(three, "bb", 2)
    assert info.value.status == 413
    with pytest.raises(MultipartError, match="64 KiB"):
        split(b"x" * (70 * 1024), "bb", 10)
    with pytest.raises(MultipartError, match="16 KiB"):
        split(b"--bb\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)) + b"\r\n", "bb", 10)
    with pytest.raises(MultipartError, match="ended before") as info:
        split(b"--bb\r\n\r\ncut short", "bb", 10)
    assert info.value.status == 400
    with pytest.raises(MultipartError, match="malformed"):
        split(b"--bbX\r\n\r\n", "bb", 10)


def test_reader_keeps_the_open_part_for_the_caller_to_discard() -> None:
    reader: MultipartReader[tuple[dict[str, str], bytes]] = MultipartReader("bb", _Collect, 10)
    reader.feed(b"--bb\r\n\r\nfirst\r\n--bb\r\n\r\nsecond, unfinished")
    assert [body for _, body in reader.take()] == [b"first"]
    assert isinstance(reader.current, _Collect)
    with pytest.raises(MultipartError):
        reader.close()


def test_truncated_stow_body_leaves_no_staged_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    raw = encode(next(iter(ct_datasets(SeriesSpec(slices=1, rows=8, columns=8, seed="t")))))
    body, ctype = multipart([raw, raw])
    reader = Part10Reader(boundary_of(ctype), spool, 10, 1 << 30)
    reader.feed(body[: len(body) - len(raw) // 2])
    with pytest.raises(MultipartError, match="ended before"):
        reader.close()
    assert list(spool.tmp.iterdir()) == []


def test_writer_round_trips_through_the_reader() -> None:
    boundary = new_boundary()
    parts = [("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", 5, [b"he", b"llo"]),
             ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90", None, [b"\r\n--x\r\n"])]
    body = b"".join(write_related(parts, boundary))
    assert body.startswith(f"--{boundary}\r\nContent-Type: application/dicom; ".encode())
    assert body.endswith(f"--{boundary}--\r\n".encode())
    ctype = related_content_type(boundary)
    assert ctype == f'multipart/related; type="application/dicom"; boundary={boundary}'
    got = split(body, boundary_of(ctype), 10)
    assert [b for _, b in got] == [b"hello", b"\r\n--x\r\n"]
    assert got[0][0]["content-length"] == "5" and "content-length" not in got[1][0]
