"""Check instances and a series against a :class:`Contract`.

Every issue names the attribute (keyword and ``(gggg,eeee)`` tag, PS3.6), the
rule it breaks and the value found, and is JSON-serialisable, so ``dicom-node
check`` and the job pipeline report the same thing. Values of patient
attributes are never copied into issues.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicom_node.errors import PixelError
from dicom_node.pixels.decode import decode_instance, read_dataset, transfer_syntax_of
from dicom_node.pixels.geometry import check_geometry, frame_geometries, is_enhanced, slice_geometry
from dicom_node.validation.contract import Contract

_PIXEL_KEYWORDS = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}

#: Attributes whose values never appear in an issue (PHI).
_PHI = {"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress"}


def tag_string(keyword: str) -> str:
    """Return ``(gggg,eeee)`` for a DICOM keyword ('' when unknown)."""
    if keyword == "TransferSyntaxUID":
        return "(0002,0010)"
    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""


@dataclass
class Issue:
    """One broken rule."""

    scope: str  # "instance" or "series"
    rule: str
    keyword: str
    tag: str
    found: Any
    message: str
    sop_instance_uid: str | None = None


@dataclass
class SeriesReport:
    """Verdict for one series."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instances: int
    contract: str | None
    issues: list[Issue] = field(default_factory=list)
    transfer_syntaxes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no rule is broken."""
        return not self.issues

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``verdict`` is "pass" or "fail")."""
        out = {k: v for k, v in asdict(self).items() if k != "issues"}
        out["verdict"] = "pass" if self.passed else "fail"
        out["issues"] = [asdict(i) for i in self.issues]
        return out


def _safe(keyword: str, value: Any) -> Any:
    """JSON-friendly value, withheld for patient attributes."""
    if keyword in _PHI:
        return "<withheld>"
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_safe(keyword, v) for v in value]
    return str(value)


def find_value(ds: Dataset, keyword: str) -> Any:
    """Value of ``keyword`` at top level or in the first frame's functional groups (PS3.3 C.7.6.16)."""
    if keyword == "TransferSyntaxUID":
        meta = getattr(ds, "file_meta", None)
        return meta.get("TransferSyntaxUID") if meta is not None else None
    if keyword in _PIXEL_KEYWORDS:
        # Presence is what a contract asks; reading the value would load (deferred) pixel data.
        return "<present>" if keyword in ds else None
    if keyword in ds:
        return ds[keyword].value
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_kw)
        if not seq:
            continue
        for macro in seq[0]:
            if macro.VR == "SQ" and macro.value and keyword in macro.value[0]:
                return macro.value[0][keyword].value
    return None


def _issue(rule: str, keyword: str, found: Any, message: str, uid: str | None, scope: str = "instance") -> Issue:
    return Issue(scope, rule, keyword, tag_string(keyword), _safe(keyword, found), message, uid)


def validate_instance(ds: Dataset, contract: Contract | None) -> list[Issue]:
    """Check one instance header against ``contract`` (no pixel decoding)."""
    if contract is None:
        return []
    uid = str(ds.get("SOPInstanceUID", "")) or None
    issues = [
        _issue("required", kw, None, f"{kw} is required by contract {contract.name}", uid)
        for kw in contract.required_tags
        if find_value(ds, kw) in (None, "")
    ]
    if contract.required_any and not any(all(find_value(ds, kw) not in (None, "") for kw in g) for g in contract.required_any):
        alternatives = " or ".join(" + ".join(g) for g in contract.required_any)
        first = next((kw for g in contract.required_any for kw in g if find_value(ds, kw) in (None, "")), contract.required_any[0][0])
        issues.append(_issue("required-any", first, None, f"one of {alternatives} is required", uid))
    checks: list[tuple[str, tuple[Any, ...], Any]] = [
        ("Modality", contract.modalities, ds.get("Modality")),
        ("SOPClassUID", contract.sop_classes, ds.get("SOPClassUID")),
        ("TransferSyntaxUID", contract.transfer_syntaxes, find_value(ds, "TransferSyntaxUID")),
        ("PhotometricInterpretation", contract.photometric_interpretations, ds.get("PhotometricInterpretation")),
        ("SamplesPerPixel", contract.samples_per_pixel, ds.get("SamplesPerPixel")),
        ("BitsAllocated", contract.bits_allocated, ds.get("BitsAllocated")),
        ("BitsStored", contract.bits_stored, ds.get("BitsStored")),
    ]
    for kw, allowed, found in checks:
        if allowed and found is not None and _norm(found) not in {_norm(a) for a in allowed}:
            issues.append(_issue("accepted-values", kw, found, f"{kw} must be one of {list(allowed)}", uid))
    return issues


def _norm(value: Any) -> str:
    return str(value).strip()


def _geometries(datasets: Sequence[Dataset]) -> list:
    out = []
    for ds in datasets:
        out.extend(frame_geometries(ds) if is_enhanced(ds) else [slice_geometry(ds)])
    return out


def _obliquity(normal: np.ndarray, axis: str) -> float:
    target = {"axial": np.array([0.0, 0.0, 1.0]), "coronal": np.array([0.0, 1.0, 0.0]), "sagittal": np.array([1.0, 0.0, 0.0])}[axis]
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(normal, target))))))


def validate_geometry(datasets: Sequence[Dataset], contract: Contract | None) -> list[Issue]:
    """Series-level geometry issues (orientation, spacing, missing/duplicate slices, mixed sizes)."""
    geoms = _geometries(datasets)
    rules = contract.geometry if contract is not None else None
    wanted = (rules is not None and rules.volume) or (
        contract is None and len(geoms) > 1 and all(g.position is not None and g.orientation is not None for g in geoms)
    )
    if not wanted:
        return []
    tol = rules.spacing_tolerance if rules is not None else 0.01
    issues = [_issue(p.rule, p.keyword, p.found, p.detail, None, "series") for p in check_geometry(geoms, spacing_tolerance=tol)]
    if rules is not None and rules.orientation and not issues and geoms[0].orientation is not None:
        angle = _obliquity(geoms[0].normal, rules.orientation)
        if angle > rules.max_obliquity_deg:
            issues.append(_issue("orientation", "ImageOrientationPatient", list(geoms[0].orientation),
                                 f"slice normal is {angle:.1f} deg from {rules.orientation}", None, "series"))
    return issues


def _decodability(ds: Dataset, path: str | None, max_inflated: int) -> list[Issue]:
    uid = str(ds.get("SOPInstanceUID", "")) or None
    try:
        decode_instance(read_dataset(path, max_inflated_bytes=max_inflated) if path else ds)
    except PixelError as exc:
        return [_issue("decodable", "PixelData", transfer_syntax_of(ds), str(exc).splitlines()[-1], uid)]
    return []


def validate_series(
    datasets_or_paths: Sequence[Dataset | str | os.PathLike[str]],
    contract: Contract | None = None,
    *,
    decode: bool = True,
    max_inflated_bytes: int = 2 * 1024**3,
) -> SeriesReport:
    """Check one series: each instance, then the series as a whole.

    Parameters
    ----------
    datasets_or_paths : sequence
        Datasets or Part 10 files of one series.
    contract : Contract, optional
        Without it only decodability and geometry are checked.
    decode : bool
        Decode each instance's pixel data to prove it decodes.
    max_inflated_bytes : int
        Bound for deflated datasets (PS3.5 A.5).

    Returns
    -------
    SeriesReport
    """
    headers: list[Dataset] = []
    paths: list[str | None] = []
    for item in datasets_or_paths:
        if isinstance(item, Dataset):
            headers.append(item)
            paths.append(None)
        else:
            # Headers only: pixels are decoded one instance at a time so a large series is never held whole.
            headers.append(read_dataset(item, max_inflated_bytes=max_inflated_bytes, stop_before_pixels=True))
            paths.append(os.fspath(item))
    h0 = headers[0] if headers else Dataset()
    report = SeriesReport(
        series_instance_uid=str(h0.get("SeriesInstanceUID", "")),
        study_instance_uid=str(h0.get("StudyInstanceUID", "")),
        modality=str(h0.get("Modality", "")),
        instances=len(headers),
        contract=contract.name if contract else None,
        transfer_syntaxes=sorted({transfer_syntax_of(h) for h in headers}),
    )
    for ds, path in zip(headers, paths, strict=False):
        report.issues.extend(validate_instance(ds, contract))
        if decode:
            report.issues.extend(_decodability(ds, path, max_inflated_bytes))
    frames = sum(int(h.get("NumberOfFrames", 1) or 1) if is_enhanced(h) else 1 for h in headers)
    if contract is not None and frames < contract.min_slices:
        report.issues.append(_issue("min-slices", "ImagePositionPatient", frames, f"at least {contract.min_slices} slices are required", None, "series"))
    report.issues.extend(validate_geometry(headers, contract))
    return report
