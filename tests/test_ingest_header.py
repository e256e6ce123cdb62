"""The ingest reads an instance's header in its framing walk: the same values as the separate header parse.

:meth:`dicom_node.ingest.Ingestor.check` used to walk the framing and then parse the header a
second time with pydicom (:func:`dicom_node.ingest.read_header`); it now takes the header from
the values the walk captured (:func:`dicom_node.ingest.header_of`). This checks, on pydicom's
own test files (every transfer syntax they come in, Implicit/Explicit, Big Endian, Deflated,
encapsulated), that both give the same identifying values and the same search-index elements.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from dicom_node.errors import UnreadableDatasetError
from dicom_node.ingest import _CAPTURE, check_framing, header_of, read_header
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
