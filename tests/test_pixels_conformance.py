"""Decode conformance over every pixel-data file of pydicom's test files and pydicom-data.

Each file is decoded and compared with its uncompressed twin, an independent
NumPy reader of native data, or an independent codec build (imagecodecs); see
:mod:`dicom_node.pixels.conformance`. The table mirrors pydicom's own
``tests/pixels/pixels_reference.py`` idea: one row per real file.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

from dicom_node.pixels import conformance
from dicom_node.pixels.decode import read_dataset, transfer_syntax_of
from dicom_node.pixels.syntaxes import syntax_info

HAVE_IMAGECODECS = importlib.util.find_spec("imagecodecs") is not None

warnings.filterwarnings("ignore", category=UserWarning)

#: Files that must be refused, with a fragment of the reason (each is broken on purpose or needs GDCM).
EXPECTED_REFUSED = {
    "JPEG-lossy.dcm": "misplaced marker",  # pydicom documents it as decodable by GDCM only
    "JPEG2000-embedded-sequence-delimiter.dcm": "failed to read the header",
    # Refused by the declared-geometry check (pixels/declared.py) before any codec runs.
    "MR_truncated.dcm": "PixelData is 8130 bytes; Rows 64 x Columns 64 x 1 frame x 1 sample x 2 bytes needs 8192",
    "badVR.dcm": "NumberOfFrames '1A' is not an integer",
    "meta_missing_tsyntax.dcm": "BitsAllocated is missing",
    "nested_priv_SQ.dcm": "BitsAllocated is missing",
}

CORPUS = conformance.corpus_files()
INDEX = {p.name: p for p in CORPUS}


def test_corpus_is_the_real_one() -> None:
    # pydicom 3's bundled files plus pydicom-data 1.0 hold at least 150 images with pixel data.
    assert len(CORPUS) >= 150
    assert "emri_small_jpeg_2k_lossless.dcm" in INDEX and "image_dfl.dcm" in INDEX


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_file_decodes_to_reference(path: Path) -> None:
    if not HAVE_IMAGECODECS and path.name not in EXPECTED_REFUSED:
        info = syntax_info(transfer_syntax_of(read_dataset(path, stop_before_pixels=True)))
        if not info.lossless or (info.encapsulated and path.name not in conformance.TWINS):
            pytest.skip("the independent reference decoder (imagecodecs) is not installed")
    result = conformance.check_file(path, INDEX)
    if path.name in EXPECTED_REFUSED:
        assert result.outcome == "refused"
        assert EXPECTED_REFUSED[path.name] in result.detail
    else:
        assert result.outcome in ("exact", "lossy"), result
        if result.outcome == "lossy":
            assert not syntax_info(result.transfer_syntax).lossless, "a lossless syntax must decode exactly"


def test_lossless_twins_are_exact() -> None:
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "emri_small_jpeg_2k_lossless.dcm", "MR2_J2KR.dcm", "OBXXXX1A_rle_2frame.dcm"):
        result = conformance.check_file(INDEX[name], INDEX)
        assert (result.outcome, result.reference.startswith("twin")) == ("exact", True), result


def test_generated_htj2k_and_process14(tmp_path: Path) -> None:
    pytest.importorskip("imagecodecs", reason="imagecodecs (independent HTJ2K/JPEG encoders) is not installed")
    results = conformance.run_generated(tmp_path)
    by_syntax: dict[str, set[str]] = {}
    for r in results:
        by_syntax.setdefault(r.transfer_syntax, set()).add(r.outcome)
    assert by_syntax["1.2.840.10008.1.2.4.201"] == {"exact"}
    assert by_syntax["1.2.840.10008.1.2.4.202"] == {"exact"}
    assert by_syntax["1.2.840.10008.1.2.4.57"] == {"exact"}
    assert by_syntax["1.2.840.10008.1.2.4.203"] <= {"lossy", "exact"}


def test_markdown_table_counts() -> None:
    results = [conformance.check_file(INDEX[n], INDEX) for n in ("MR_small_RLE.dcm", "MR_truncated.dcm")]
    table = conformance.markdown_table(results)
    assert "| RLE Lossless | 1.2.840.10008.1.2.5 | 1 | 0 | 0 | 0 |" in table
    assert "| Explicit VR LE | 1.2.840.10008.1.2.1 | 0 | 0 | 1 | 0 |" in table
