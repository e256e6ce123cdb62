"""The ingest reads an instance's header in its framing walk: the same values as the separate header parse.

:meth:`dicom_node.ingest.Ingestor.check` used to walk the framing and then parse the header a
second time with pydicom (:func:`dicom_node.ingest.read_header`); it now takes the header from
the values the walk captured (:func:`dicom_node.ingest.header_of`). This checks, on pydicom's
own test files (every transfer syntax they come in, Implicit/Explicit, Big Endian, Deflated,
encapsulated), that both give the same identifying values and the same search-index elements.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.tag import BaseTag

from dicom_node.errors import PixelDataError, UnreadableDatasetError
from dicom_node.ingest import _CAPTURE, _GEOMETRY, _declared, _declared_plain, check_framing, header_of, read_header
from dicom_node.pixels.declared import DeclaredGeometry
from dicom_node.pixels.framing import walk_file
from dicom_node.pixels.syntaxes import SYNTAXES
from dicom_node.staging import parse_meta

BOUND = 64 * 1024 * 1024
KNOWN = {info.uid for info in SYNTAXES} | {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                           "1.2.840.10008.1.2.1.99"}


def _part10_files() -> list[tuple[Path, str, int]]:
    out = []
    for name in sorted(get_testdata_files("*.dcm")):
        path = Path(name)
        head = path.read_bytes()[:65536]
        try:
            parsed = parse_meta(head)
        except ValueError:
            continue
        if parsed is None or parsed[0].get("transfer_syntax") not in KNOWN:
            continue
        out.append((path, parsed[0]["transfer_syntax"], parsed[1]))
    return out


FILES = _part10_files()


def test_enough_files_in_enough_syntaxes() -> None:
    assert len(FILES) >= 40 and len({syntax for _, syntax, _ in FILES}) >= 8


@pytest.mark.parametrize(("path", "syntax", "offset"), FILES, ids=[f[0].name for f in FILES])
def test_the_walk_captures_what_read_header_parses(path: Path, syntax: str, offset: int) -> None:
    try:
        found = check_framing(path, offset, syntax, BOUND, _CAPTURE)
    except UnreadableDatasetError:
        pytest.skip("refused by the framing checks before any header is read (both ways)")
    walked, parsed = Dataset(), Dataset()
    assert header_of(found, walked) == read_header(path, offset, syntax, BOUND, parsed)
    assert sorted(walked.keys()) == sorted(parsed.keys())
    for tag in parsed.keys():
        assert walked[tag].value == parsed[tag].value, tag


# -- the declared geometry: read directly in the common encoding, by pydicom otherwise ---------------------------


def _outcome(read: Callable[[], DeclaredGeometry]) -> DeclaredGeometry | str:
    """The geometry, or the refusal as text (the type and message a caller would see)."""
    try:
        return read()
    except (PixelDataError, ValueError, TypeError, BytesLengthException) as exc:  # pydicom's conversion errors too
        return f"{type(exc).__name__}: {exc}"


def _pydicom_geometry(values: dict[int, Any]) -> DeclaredGeometry | str:
    return _outcome(lambda: DeclaredGeometry.from_dataset(
        Dataset({BaseTag(t): e for t, e in values.items() if t in _GEOMETRY})))


@pytest.mark.parametrize(("path", "syntax", "offset"), FILES, ids=[f[0].name for f in FILES])
def test_the_direct_geometry_is_pydicoms(path: Path, syntax: str, offset: int) -> None:
    try:
        found = walk_file(path, offset, syntax, max_inflated=BOUND, capture=_GEOMETRY)
    except UnreadableDatasetError:
        pytest.skip("broken framing: no geometry is read")
    direct = _declared_plain(found.values)
    if direct is not None:
        assert direct == _pydicom_geometry(found.values)
    assert _outcome(lambda: _declared(found.values)) == _pydicom_geometry(found.values)


def _raw(tag: int, vr: str | None, value: bytes, little: bool = True) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, vr is None, little)


def _values(little: bool = True, implicit: bool = False, **changes: tuple[str | None, bytes]) -> dict[int, Any]:
    order: Literal["little", "big"] = "little" if little else "big"
    us = {t: ("US", n.to_bytes(2, order)) for t, n in ((0x00280002, 1), (0x00280010, 3), (0x00280011, 4),
                                                        (0x00280100, 16), (0x00280101, 12), (0x00280102, 11))}
    base: dict[int, tuple[str | None, bytes]] = {0x00080018: ("UI", b"1.2.3.4\x00"), 0x00280004: ("CS", b"MONOCHROME2 "),
                                                 0x00280008: ("IS", b"2 "), **us}
    tags = {"uid": 0x00080018, "photometric": 0x00280004, "frames": 0x00280008, "rows": 0x00280010}
    for name, change in changes.items():
        base[tags[name]] = change
    return {t: _raw(t, None if implicit else vr, v, little) for t, (vr, v) in base.items() if v != b"<absent>"}


@pytest.mark.parametrize("values", [
    _values(), _values(little=False), _values(implicit=True), _values(frames=("IS", b"<absent>")),
    _values(frames=("IS", b" 12 ")), _values(frames=("IS", b"1.5")), _values(frames=("IS", b"")),
    _values(frames=("IS", b"2\\3")), _values(uid=("UI", b"1.2.3 ")), _values(uid=("UI", b"1.2\\3.4")),
    _values(uid=("UI", b"")), _values(photometric=("CS", b"RGB\x00")), _values(photometric=("CS", b" RGB")),
    _values(photometric=("CS", b"A\\B")), _values(photometric=("CS", b"<absent>")), _values(rows=("US", b"\x01")),
    _values(rows=("US", b"\x01\x00\x02\x00")), _values(rows=("SS", b"\x01\x00")), _values(rows=("US", b"<absent>")),
    _values(rows=("US", b"")),
], ids=lambda v: "-")
def test_odd_encodings_fall_back_to_pydicom_with_the_same_outcome(values: dict[int, Any]) -> None:
    direct = _declared_plain(values)
    expected = _pydicom_geometry(values)
    if direct is not None:
        assert direct == expected
    assert _outcome(lambda: _declared(values)) == expected
