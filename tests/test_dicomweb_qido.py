"""QIDO-RS against a real node: studies received by C-STORE and STOW-RS, searched with dicomweb-client."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicom_node.archive.keys import KEYS
from dicom_node.archive.match import condition
from dicom_node.archive.query import _set, element_json, parse_qido, run, run_json
from dicom_node.index import qido
from dicom_node.index.schema import MIGRATIONS, _set_version, migrate
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import node_index, wait_for
from tests.scu import send_all

SECRET = "qido-reader-secret"


def _study(seed: str, name: str, pid: str, date: str, time_: str, accession: str, slices: int = 3) -> list[Dataset]:
    datasets = list(ct_datasets(SeriesSpec(slices=slices, rows=16, columns=16, seed=seed)))
    for ds in datasets:
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = name, pid, date, time_
        ds.AccessionNumber, ds.StudyDescription = accession, f"study {seed}"
    return datasets


@pytest.fixture
def archive(start_node) -> tuple[Node, dict[str, list[Dataset]]]:
    node: Node = start_node()
    studies = {
        "a": _study("qa", "Doe^Jane", "P1", "20240105", "101500", "ACC1"),
        "b": _study("qb", "DOE^JOHN", "P2", "20240220", "083000", "ACC2"),
        "c": _study("qc", "Smith^Ann", "P3", "20231231", "235959", "ACC3", slices=2),
    }
    assert send_all(node.scp.port, studies["a"] + studies["b"]) == [0] * 6
    DICOMwebClient(url=f"http://127.0.0.1:{node.api.port}/dicomweb").store_instances(studies["c"])
    return node, studies


def _client(node: Node) -> DICOMwebClient:
    return DICOMwebClient(url=f"http://127.0.0.1:{node.api.port}/dicomweb")


def _uids(found: list[dict], keyword: str = "StudyInstanceUID") -> set[str]:
    tag = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018"}[keyword]
    return {f[tag]["Value"][0] for f in found}


def test_study_search_every_matching_form(archive) -> None:
    node, studies = archive
    uid = {k: str(v[0].StudyInstanceUID) for k, v in studies.items()}
    web = _client(node)
    assert _uids(web.search_for_studies()) == set(uid.values())
    cases = {
        "single": ({"PatientID": "P2"}, {"b"}),
        "list": ({"PatientID": "P1\\P3"}, {"a", "c"}),
        "wildcard, PN ignores case": ({"PatientName": "doe*"}, {"a", "b"}),
        "question mark": ({"AccessionNumber": "ACC?"}, {"a", "b", "c"}),
        "wildcard keeps case outside PN": ({"StudyDescription": "STUDY*"}, set()),
        "date range": ({"StudyDate": "20240101-20240131"}, {"a"}),
        "open date range": ({"StudyDate": "20240101-"}, {"a", "b"}),
        "open low": ({"StudyDate": "-20231231"}, {"c"}),
        "time range (an hour bound covers its hour)": ({"StudyTime": "08-09"}, {"b"}),
        "time range to 10": ({"StudyTime": "0800-10"}, {"a", "b"}),
        "uid list": ({"StudyInstanceUID": f"{uid['a']}\\{uid['c']}"}, {"a", "c"}),
        "modalities in study": ({"ModalitiesInStudy": "CT"}, {"a", "b", "c"}),
        "no match": ({"PatientID": "nobody"}, set()),
    }
    for name, (filters, expected) in cases.items():
        assert _uids(web.search_for_studies(search_filters=filters)) == {uid[k] for k in expected}, name
    one = web.search_for_studies(search_filters={"PatientID": "P1"})[0]
    assert one["00100010"]["Value"][0]["Alphabetic"] == "Doe^Jane"
    assert one["00201206"]["Value"] == [1] and one["00201208"]["Value"] == [3]
    assert one["00080061"]["Value"] == ["CT"]
    assert one["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{uid['a']}")


def test_person_names_beyond_ascii_match_regardless_of_case(start_node) -> None:
    node: Node = start_node()
    datasets = _study("qlatin", "Müller^Jürgen", "P8", "20240301", "100000", "ACC8", slices=1)
    datasets[0].SpecificCharacterSet = "ISO_IR 100"
    assert send_all(node.scp.port, datasets) == [0]
    web = _client(node)
    for pattern in ("MÜLLER*", "müller^jürgen", "M?ller*"):
        found = web.search_for_studies(search_filters={"PatientName": pattern})
        assert [f["00100010"]["Value"][0]["Alphabetic"] for f in found] == ["Müller^Jürgen"], pattern


def test_series_and_instance_searches(archive) -> None:
    node, studies = archive
    web = _client(node)
    a = studies["a"]
    study, series = str(a[0].StudyInstanceUID), str(a[0].SeriesInstanceUID)
    found = web.search_for_series(study)
    assert _uids(found, "SeriesInstanceUID") == {series}
    assert found[0]["00080060"]["Value"] == ["CT"] and found[0]["00201209"]["Value"] == [3]
    assert len(web.search_for_series(search_filters={"Modality": "CT"})) == 3
    instances = web.search_for_instances(study, series)
    assert _uids(instances, "SOPInstanceUID") == {str(d.SOPInstanceUID) for d in a}
    assert instances[0]["00280010"]["Value"] == [16]
    assert len(web.search_for_instances(study)) == 3
    assert len(web.search_for_instances(search_filters={"PatientID": "P3"})) == 2
    numbered = web.search_for_instances(study, series, search_filters={"InstanceNumber": "2"})
    assert len(numbered) == 1


def test_includefield_limit_offset_fuzzy_and_errors(archive) -> None:
    node, _studies = archive
    base = f"http://127.0.0.1:{node.api.port}/dicomweb"
    web = _client(node)
    with_desc = web.search_for_studies(fields=["StudyDescription"], search_filters={"PatientID": "P1"})
    assert with_desc[0]["00081030"]["Value"] == ["study qa"]
    every = httpx.get(f"{base}/studies", params=[("includefield", "all"), ("PatientID", "P1")]).json()
    assert "00081030" in every[0]
    page = httpx.get(f"{base}/studies", params={"limit": "2"})
    assert page.status_code == 200 and len(page.json()) == 2 and "more results" in page.headers["warning"]
    rest = httpx.get(f"{base}/studies", params={"limit": "2", "offset": "2"})
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    assert _uids(page.json()) | _uids(rest.json()) == _uids(web.search_for_studies())
    fuzzy = httpx.get(f"{base}/studies", params={"PatientName": "doe*", "fuzzymatching": "true"})
    assert fuzzy.status_code == 200 and "fuzzymatching not supported" in fuzzy.headers["warning"]
    assert len(fuzzy.json()) == 2
    empty = httpx.get(f"{base}/studies", params={"PatientID": "nobody"})
    assert empty.status_code == 200 and empty.json() == []
    for params, words in (({"NoSuchKey": "x"}, "NoSuchKey"), ({"StudyDate": "2024-01-01x"}, "StudyDate"),
                          ({"limit": "-1"}, "limit"), ({"StudyDate": "20240201-20240101"}, "ends before")):
        bad = httpx.get(f"{base}/studies", params=params)
        assert bad.status_code == 400 and words in bad.json()["error"]["description"], params
    xml = httpx.get(f"{base}/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert xml.status_code == 406


def test_auth_and_cors(start_node) -> None:
    key = {"name": "viewer", "sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "scopes": ["read"]}
    node: Node = start_node(api={"api_keys": [key], "cors_allowed_origins": ["http://viewer.test"]})
    base = f"http://127.0.0.1:{node.api.port}/dicomweb"
    assert httpx.get(f"{base}/studies").status_code == 401
    answer = httpx.get(f"{base}/studies", headers={"X-API-Key": SECRET, "Origin": "http://viewer.test"})
    assert answer.status_code == 200 and answer.json() == []
    assert answer.headers["access-control-allow-origin"] == "http://viewer.test"
    assert "warning" in answer.headers["access-control-expose-headers"].lower()
    preflight = httpx.options(f"{base}/studies", headers={
        "Origin": "http://viewer.test", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    other = httpx.get(f"{base}/studies", headers={"X-API-Key": SECRET, "Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(start_node) -> None:
    node: Node = start_node()
    answer = httpx.get(f"http://127.0.0.1:{node.api.port}/dicomweb/studies", headers={"Origin": "http://x.test"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_common_searches_use_an_index(tmp_path: Path) -> None:
    """A 10,000-study search must not scan: the plan of each common study search names an index."""
    conn = sqlite3.connect(tmp_path / "i.sqlite3", isolation_level=None)
    migrate(conn)
    for keyword, value in (("PatientID", "P1"), ("PatientName", "doe*"), ("StudyDate", "20240101-20240131"),
                           ("AccessionNumber", "A1"), ("StudyInstanceUID", "1.2.3"), ("ModalitiesInStudy", "CT")):
        found = condition(KEYS[keyword], value)
        assert found is not None
        plan = " ".join(qido.plan(conn, "STUDY", found.filters))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan or "PRIMARY KEY" in plan, (keyword, plan)
    search = parse_qido("INSTANCE", [], {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"})
    assert search.scope["SeriesInstanceUID"] == "1.2.3"


ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
CT_RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def test_results_written_by_a_job_are_searchable(start_node) -> None:
    node: Node = start_node(routing={"rules": [CT_RULE]}, inference={"models_dir": ENGINES})
    datasets = _study("qjob", "Roe^Rita", "P9", "20250301", "120000", "ACC9", slices=6)
    web = _client(node)
    web.store_instances(datasets)
    study = str(datasets[0].StudyInstanceUID)

    def modalities() -> set[str]:
        return {s["00080060"]["Value"][0] for s in web.search_for_series(study)}

    assert wait_for(lambda: modalities() == {"CT", "SEG", "SR"}, timeout=90), modalities()
    segs = web.search_for_instances(study, search_filters={"SOPClassUID": SEG_CLASS})
    assert len(segs) == 1 and segs[0]["00080016"]["Value"] == [SEG_CLASS]
    summary = web.search_for_studies(search_filters={"PatientID": "P9"})[0]
    assert summary["00080061"]["Value"] == ["CT", "SEG", "SR"] and summary["00201206"]["Value"] == [3]
    seg_series = web.search_for_series(study, search_filters={"Modality": "SEG"})[0]
    assert seg_series["00201209"]["Value"] == [1]


def _downgrade(conn: sqlite3.Connection, version: int) -> None:
    """Undo the migrations after ``version`` on ``conn`` (SQLite or PostgreSQL), newest first.

    What each adds is dropped (its indexes before the columns they cover, which SQLite requires), read off
    ``schema.MIGRATIONS`` so a new migration needs no change here; the version is set with the schema
    module's own setter (``PRAGMA user_version`` on SQLite, the ``dicom_node_schema`` row on PostgreSQL).
    """
    for migration in reversed([m for m in MIGRATIONS if m.version > version]):
        for statement in reversed(migration.statements()):
            if (m := re.match(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", statement, re.I)):
                conn.execute(f"DROP INDEX IF EXISTS {m[1]}")
            elif (m := re.match(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", statement, re.I)):
                conn.execute(f"DROP TABLE IF EXISTS {m[1]}")
            elif (m := re.match(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)", statement, re.I)):
                conn.execute(f"ALTER TABLE {m[1]} DROP COLUMN {m[2]}")
            else:
                raise AssertionError(f"migration {migration.version}: no way to undo {statement[:60]!r}")
    _set_version(conn, version)


def test_an_index_from_before_the_search_tables_is_backfilled_at_start(start_node, tmp_path: Path) -> None:
    root = tmp_path / "old"
    node: Node = start_node(root=root)
    datasets = _study("qold", "Old^Index", "P7", "20200101", "090000", "ACC7")
    assert send_all(node.scp.port, datasets) == [0] * 3
    node.stop()
    # What an index written before migration 3 looks like: no qido_* tables, none of the later
    # migrations' tables, indexes and columns, schema version 2; on whichever backend the node runs.
    with node_index(root) as index:
        conn = index.reader()
        try:
            _downgrade(conn, 2)
        finally:
            conn.close()
    again: Node = start_node(root=root)
    found = _client(again).search_for_studies(search_filters={"PatientID": "P7"})
    assert _uids(found) == {str(datasets[0].StudyInstanceUID)}
    assert found[0]["00201208"]["Value"] == [3]


def test_ten_thousand_studies_are_paged_off_the_index(tmp_path: Path) -> None:
    """The default study search is read off an index in order (no sort of every study), and pages are exact."""
    conn = sqlite3.connect(tmp_path / "i.sqlite3", isolation_level=None)
    migrate(conn)
    conn.execute("BEGIN")
    for n in range(10_000):
        study = f"1.2.826.0.1.{n}"
        qido.record(conn, qido.QidoRecord(
            study={"study_uid": study, "patient_id": f"P{n % 97}", "study_date": f"2024{1 + n % 12:02d}{1 + n % 28:02d}",
                   "study_time": f"{n % 24:02d}0000"},
            series={"series_uid": study + ".1", "study_uid": study, "modality": "CT" if n % 2 else "MR"},
            instance={"sop_uid": study + ".1.1", "series_uid": study + ".1", "study_uid": study,
                      "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}, origin="received"), 0.0)
    conn.execute("COMMIT")
    plan = " ".join(qido.plan(conn, "STUDY", []))
    assert "qido_studies_date" in plan and "TEMP B-TREE" not in plan, plan
    first = run(conn, parse_qido("STUDY", [("limit", "100")]))
    second = run(conn, parse_qido("STUDY", [("limit", "100"), ("offset", "100")]))
    assert first.truncated and len(first.entities) == len(second.entities) == 100
    dates = [str(ds.StudyDate) for ds in first.entities + second.entities]
    assert dates == sorted(dates, reverse=True)
    assert not {ds.StudyInstanceUID for ds in first.entities} & {ds.StudyInstanceUID for ds in second.entities}
    ct = run(conn, parse_qido("STUDY", [("ModalitiesInStudy", "CT"), ("PatientID", "P5"), ("limit", "1000")]))
    assert ct.entities and all(ds.ModalitiesInStudy == "CT" and ds.PatientID == "P5" for ds in ct.entities)
    assert len(ct.entities) == sum(1 for n in range(10_000) if n % 97 == 5 and n % 2)


@pytest.mark.parametrize(("keyword", "value"), [
    ("PatientName", "DOE^JOHN"), ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう"), ("PatientName", "=Ideo"),
    ("PatientName", "A^B\\C^D"), ("PatientName", ""), ("PatientName", None), ("PatientName", "Müller^Jörg"),
    ("StudyInstanceUID", "1.2.3"), ("StudyDate", "20240101"), ("StudyTime", "120000.123"),
    ("AccessionNumber", "A\\"), ("PatientID", "X\\Y\\Z"), ("StudyDescription", " padded "),
    ("ModalitiesInStudy", ["CT", "MR"]), ("ModalitiesInStudy", ["CT"]), ("ModalitiesInStudy", []),
    ("ModalitiesInStudy", None), ("SOPClassesInStudy", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"]),
    ("NumberOfStudyRelatedSeries", 0), ("NumberOfStudyRelatedInstances", 512), ("Rows", 512), ("Rows", None),
    ("SeriesNumber", None), ("SeriesNumber", "5"), ("InstanceNumber", 7),
    # Asked for by includefield but not held: whatever VR the dictionary gives, sequences and ambiguous VRs too.
    ("ReferencedSeriesSequence", None), ("SmallestImagePixelValue", None), ("PixelSpacing", None),
    ("PatientWeight", None), ("RetrieveURL", None), ("PixelData", None), ("InstitutionName", None),
])
def test_search_json_is_what_pydicom_writes_for_the_same_values(keyword: str, value: object) -> None:
    """QIDO-RS writes DICOM JSON without a Dataset (element_json); it must equal pydicom's to_json_dict."""
    ds = Dataset()
    _set(ds, keyword, value)  # type: ignore[arg-type]  # the test feeds odd types on purpose
    tag, element = element_json(keyword, value)  # type: ignore[arg-type]
    assert json.dumps({tag: element}) == json.dumps(ds.to_json_dict())


def test_search_json_equals_the_datasets_of_the_same_search(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "i.sqlite3", isolation_level=None)
    migrate(conn)
    for n, name in enumerate(("DOE^JOHN", "Doe^Jane", "Yamada^Tarou=山田^太郎", None)):
        study = f"1.2.826.0.2.{n}"
        qido.record(conn, qido.QidoRecord(
            study={"study_uid": study, "patient_name": name, "patient_id": f"P{n}", "study_date": f"2024010{n + 1}"},
            series={"series_uid": study + ".1", "study_uid": study, "modality": "CT", "series_number": n or None},
            instance={"sop_uid": study + ".1.1", "series_uid": study + ".1", "study_uid": study, "rows": 8,
                      "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}, origin="received"), 0.0)
    for level, params in (("STUDY", [("PatientName", "doe*")]), ("STUDY", [("includefield", "all")]),
                          ("SERIES", [("includefield", "StudyDescription,ReferencedSeriesSequence")]),
                          ("INSTANCE", [("limit", "2")]), ("STUDY", [("ModalitiesInStudy", "CT\\MR")])):
        search = parse_qido(level, params)  # type: ignore[arg-type]
        assert run_json(conn, search).entities == [ds.to_json_dict() for ds in run(conn, search).entities]
