"""Contracts: loading, instance rules, series geometry rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node.errors import ConfigError
from dicom_node.synthetic import SeriesSpec, ct_datasets
from dicom_node.validation import Contract, builtin_contracts, load_contract, validate_series

CXR_REQUIRED = [
    "TransferSyntaxUID", "ImageType", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
    "SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "PixelData",
]


def cxr() -> Dataset:
    """A DX For Presentation image made from a synthetic slice."""
    ds = next(ct_datasets(SeriesSpec(slices=1, rows=32, columns=32)))
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    return ds


def test_builtin_contracts() -> None:
    assert {"cxr-foundation", "ct-volume"} <= set(builtin_contracts())
    c = load_contract("cxr-foundation")
    assert list(c.required_tags) == CXR_REQUIRED
    assert c.samples_per_pixel == (1,) and c.required_any == (("ModalityLUTSequence",), ("WindowCenter", "WindowWidth"))
    ct = load_contract("ct-volume")
    assert ct.geometry.volume and ct.min_slices == 16
    # TOML form round-trips.
    assert Contract.from_dict(ct.to_dict()) == ct


def test_bad_contracts_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown contract 'nope'"):
        load_contract("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nrequired_tags = ["PixelDta"]\n')
    with pytest.raises(ConfigError, match="required_tags: unknown DICOM keyword.*PixelDta"):
        load_contract(bad)
    bad.write_text('name = "x"\nmodalitis = ["CT"]\n')
    with pytest.raises(ConfigError, match="unknown key.*modalitis"):
        load_contract(bad)


def test_cxr_pass_and_every_missing_tag_named() -> None:
    contract = load_contract("cxr-foundation")
    assert validate_series([cxr()], contract).passed
    stripped = cxr()
    for kw in ["ImageType", "HighBit", "WindowCenter", "WindowWidth"]:
        del stripped[kw]
    report = validate_series([stripped], contract, decode=False)
    found = {(i.rule, i.keyword, i.tag) for i in report.issues}
    assert ("required", "ImageType", "(0008,0008)") in found
    assert ("required", "HighBit", "(0028,0102)") in found
    assert any(r == "required-any" and "ModalityLUTSequence or WindowCenter + WindowWidth" in m for r, m in ((i.rule, i.message) for i in report.issues))
    json.dumps(report.to_json())


def test_cxr_refuses_rgb_and_wrong_modality() -> None:
    ds = cxr()
    ds.SamplesPerPixel = 3
    ds.Modality = "CT"
    report = validate_series([ds], load_contract("cxr-foundation"), decode=False)
    by_kw = {i.keyword: i for i in report.issues}
    assert by_kw["SamplesPerPixel"].found == 3 and by_kw["SamplesPerPixel"].rule == "accepted-values"
    assert by_kw["Modality"].found == "CT"


def test_patient_values_never_in_issues() -> None:
    contract = Contract(name="t", required_tags=("PatientName",), modalities=("MR",))
    ds = cxr()
    report = validate_series([ds], contract, decode=False)
    assert "SYNTHETIC" not in json.dumps(report.to_json())


def _series(edit=None, slices: int = 20) -> list[Dataset]:
    out = []
    for i, ds in enumerate(ct_datasets(SeriesSpec(slices=slices, rows=16, columns=16))):
        if edit:
            edit(i, ds)
        out.append(ds)
    return out


def test_ct_volume_geometry_rules() -> None:
    contract = load_contract("ct-volume")
    assert validate_series(_series(), contract).passed
    gap = [ds for i, ds in enumerate(_series()) if i not in (7, 8)]
    rules = {i.rule for i in validate_series(gap, contract, decode=False).issues}
    assert rules == {"missing-slices"}
    uneven = _series(lambda i, ds: setattr(ds, "ImagePositionPatient", [0, 0, i + (0.3 if i == 5 else 0)]))
    assert "uniform-spacing" in {i.rule for i in validate_series(uneven, contract, decode=False).issues}
    tilted = _series(lambda i, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1] if i == 3 else [1, 0, 0, 0, 1, 0]))
    assert {i.rule for i in validate_series(tilted, contract, decode=False).issues} == {"consistent-orientation"}
    coronal = _series(lambda i, ds: (setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), setattr(ds, "ImagePositionPatient", [0, i, 0])))
    assert {i.rule for i in validate_series(coronal, contract, decode=False).issues} == {"orientation"}
    few = validate_series(_series(slices=4), contract, decode=False)
    assert [(i.rule, i.found) for i in few.issues] == [("min-slices", 4)]


def test_no_contract_checks_decodability_and_geometry() -> None:
    broken = _series(slices=3)
    broken[1].PixelData = broken[1].PixelData[:100]
    report = validate_series(broken, None)
    assert [(i.rule, i.keyword, i.sop_instance_uid) for i in report.issues] == [("decodable", "PixelData", str(broken[1].SOPInstanceUID))]
