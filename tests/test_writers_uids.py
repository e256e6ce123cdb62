"""Deterministic result UIDs (PS3.5 9.1, B.2) and writer options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from dicom_node.config import NodeConfig, ResultsConfig
from dicom_node.errors import WriterError
from dicom_node.writers import WriterOptions, derive_uid, result_uids
from dicom_node.writers.uids import check_uid_root, is_valid_uid
from inference.spec import DERIVED_SERIES_FIRST, DERIVED_SERIES_SLOTS, derived_series_number
from tests.writer_fixtures import STORE

SERIES = "1.2.840.113619.2.55.3.604688119.868.1234567890.123"
UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _all(root: str, series: str = SERIES, model: str = "ct-body", version: str = "1.0.0") -> list[str]:
    u = result_uids(root, series, model, version)
    return [u.seg_series_instance_uid, u.seg_sop_instance_uid, u.sr_series_instance_uid, u.sr_sop_instance_uid]


@pytest.mark.parametrize("root", ["2.25.", "1.2.826.0.1.3680043.10.543.", "1.2.826.0.1.3680043.10.543.12345678901234."])
def test_same_inputs_same_uids_and_all_valid(root: str) -> None:
    uids = _all(root)
    assert uids == _all(root)
    assert len(set(uids)) == 4
    for uid in uids:
        assert uid.startswith(root) and len(uid) <= 64 and UID_RE.fullmatch(uid) and is_valid_uid(uid)


@pytest.mark.parametrize("change", [{"version": "1.0.1"}, {"model": "ct-lungs"}, {"series": SERIES + "1"}])
def test_any_changed_input_changes_every_uid(change: dict[str, str]) -> None:
    before, after = _all("2.25."), _all("2.25.", **change)
    assert not set(before) & set(after)


def test_default_root_is_a_name_based_uuid() -> None:
    uid = result_uids("2.25.", SERIES, "ct-body", "1.0.0").seg_sop_instance_uid
    value = uuid.UUID(int=int(uid.removeprefix("2.25.")))
    assert value.version == 5 and value.variant == uuid.RFC_4122
    assert len(uid) <= 44


def test_parts_are_not_ambiguous_when_joined() -> None:
    assert derive_uid("2.25.", "1.2", "3") != derive_uid("2.25.", "1", "2.3")
    assert derive_uid("2.25.", "a", "b") == derive_uid("2.25", "a", "b")  # final dot is added


def test_org_root_uses_the_space_left_but_at_most_128_bits() -> None:
    short = derive_uid("1.2.3.", "x")
    assert len(short) - len("1.2.3.") <= 39
    long_root = "1.2.826.0.1.3680043.10.543.1234567890.123456789."  # 48 characters: 16 digits left
    assert len(long_root) == 48
    assert len(derive_uid(long_root, "x")) <= 64


@pytest.mark.parametrize("root", ["", "1.02.", "1..2.", "abc.", "1.2.826.0.1.3680043.10.543.1234567890.12345678901."])
def test_invalid_roots_are_rejected(root: str) -> None:
    with pytest.raises(WriterError, match="results.uid_root"):
        check_uid_root(root)


def test_missing_series_uid_is_an_error() -> None:
    with pytest.raises(WriterError, match="Series Instance UID"):
        result_uids("2.25.", "", "ct-body", "1.0.0")


def test_tracking_uids_derive_from_the_same_basis() -> None:
    a, b = result_uids("2.25.", SERIES, "ct-body", "1.0.0"), result_uids("2.25.", SERIES, "ct-body", "1.0.1")
    assert a.derive("segment", 0) == result_uids("2.25.", SERIES, "ct-body", "1.0.0").derive("segment", 0)
    assert a.derive("segment", 0) != a.derive("segment", 1) != b.derive("segment", 1)


def test_options_from_config_section() -> None:
    assert WriterOptions.from_config(None) == WriterOptions()
    section = SimpleNamespace(uid_root="1.2.826.0.1.3680043.10.543.", seg_series_number=300, sr_series_description="AI {model}", other=1)
    options = WriterOptions.from_config(section)
    assert options.uid_root == section.uid_root and options.seg_series_number == 300 and options.sr_series_number is None
    assert options.series_description("sr", "ct-body", "1.0.0") == "AI ct-body"
    assert len(WriterOptions(seg_series_description="x" * 80).series_description("seg", "m", "v")) == 64


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"seg_series_number": 0}, "seg_series_number"),
        ({"uid_root": "1.02."}, "uid_root"),
        ({"segmentation_type": "LABELMAP"}, "segmentation_type"),
    ],
)
def test_options_reject_bad_values(changes: dict[str, object], key: str) -> None:
    with pytest.raises(WriterError, match=f"results.{key}"):
        WriterOptions().with_changes(**changes)
    with pytest.raises(WriterError, match="only {model} and {version}"):
        WriterOptions(sr_series_description="{patient}").series_description("sr", "m", "v")


def test_each_model_numbers_and_names_its_own_series() -> None:
    """Two models' results on one study must differ in a PACS series list (number and description)."""
    options = WriterOptions.from_config(NodeConfig().results)
    body, lungs = STORE.get("ct-body").spec, STORE.get("ct-lungs").spec
    numbers = {(m.name, k): options.series_number(k, m) for m in (body, lungs) for k in ("seg", "sr")}
    assert numbers == {("ct-body", "seg"): 9010, ("ct-body", "sr"): 9011, ("ct-lungs", "seg"): 9020, ("ct-lungs", "sr"): 9021}
    assert options.series_description("seg", "ct-lungs", "1.0.0") == "ct-lungs 1.0.0 AI segmentation"
    assert options.series_description("sr", "ct-lungs", "1.0.0") == "ct-lungs 1.0.0 AI measurement report"
    # A site may still put every model's results under one number; descriptions keep them apart.
    site = options.with_changes(seg_series_number=300, sr_series_number=301)
    assert {site.series_number("seg", body), site.series_number("sr", lungs)} == {300, 301}


def test_unnumbered_model_gets_a_stable_derived_number() -> None:
    spec = STORE.get("ct-body").spec.model_copy(update={"series_number": None})
    number = WriterOptions().series_number("seg", spec)
    assert number == derived_series_number("ct-body") and WriterOptions().series_number("sr", spec) == number + 1
    assert number % 2 == 0 and DERIVED_SERIES_FIRST <= number < DERIVED_SERIES_FIRST + 2 * DERIVED_SERIES_SLOTS
    # Not Python's salted hash(): another process with another hash seed derives the same number.
    code = "from inference.spec import derived_series_number as d; print(d('ct-body'))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True)
        assert int(out.stdout) == number


def test_long_model_names_keep_version_and_kind_within_lo() -> None:
    name = "a-very-long-model-name-" + "x" * 41
    text = WriterOptions().series_description("sr", name, "10.20.30-rc1")
    assert len(text) == 64 and text.endswith(" 10.20.30-rc1 AI measurement report") and text.startswith("a-very-long")


def test_results_config_defaults_match_the_writers_and_reject_bad_templates() -> None:
    assert WriterOptions.from_config(ResultsConfig()) == WriterOptions()
    with pytest.raises(ValidationError, match="placeholders"):
        ResultsConfig(seg_series_description="{patient} AI")
