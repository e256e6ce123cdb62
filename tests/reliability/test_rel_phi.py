"""PHI canaries: patient attributes sent in by every door never leak into logs, the index or REST answers.

A unique PatientName, PatientID, PatientBirthDate, AccessionNumber and
InstitutionName go in by C-STORE (a good series, whose job runs and writes results,
and a corrupt one, whose job fails with a reason), STOW-RS, predict and an upload
session. Then, on a ``dicom-node serve`` subprocess logging at DEBUG:

- its stderr (the whole log, start to stop) holds none of them;
- the index file holds none of them, except in the ``qido_*`` tables (migration 3).
  Those tables exist to answer QIDO-RS searches by patient name, ID, birth date and
  accession (PS3.18 10.6): indexing those attributes is their purpose, they are read
  only by the DICOMweb routes, which serve DICOM to authorised viewers by design. The
  test drops exactly those tables from a copy of the file and searches the rest;
- no REST answer holds them except DICOMweb and the result files, which are DICOM
  objects that carry the patient module by design (PS3.3 C.7.1.1); error bodies
  are included in the search.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
from pydicom.dataset import Dataset

from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import ServeProcess, free_port, wait_for
from tests.receiver import multipart_related
from tests.scu import send_all

ENGINES = Path(__file__).resolve().parents[2] / "engines"
CANARIES = {
    "PatientName": "Canary^Phileas7731",
    "PatientID": "CANARYPID7731",
    "PatientBirthDate": "18770611",
    "AccessionNumber": "CANACC7731",
    "InstitutionName": "Canary Infirmary 7731",
}


def canary_series(seed: str, slices: int = 3) -> list[Dataset]:
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=32, columns=32, seed=seed)):
        for key, value in CANARIES.items():
            setattr(ds, key, value)
        out.append(ds)
    return out


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def leaks(data: bytes | str) -> list[str]:
    """The canaries (and their DICOM spellings) found in ``data``."""
    text = data if isinstance(data, str) else data.decode("latin-1")
    found = [v for v in CANARIES.values() if v.lower() in text.lower()]
    # A PN may also appear with its component separator spelled otherwise, or in parts.
    found += [p for p in ("Phileas7731",) if p.lower() in text.lower() and CANARIES["PatientName"] not in found]
    return found


def index_without_qido(db: Path, tmp: Path, drop: bool = True) -> tuple[bytes, list[str]]:
    """The index file's bytes after dropping exactly the ``qido_*`` tables from a copy (see the module doc).

    Returns the bytes and the tables dropped (``drop=False`` keeps them: the positive control).
    """
    copy = tmp / ("index-copy.sqlite3" if drop else "index-control.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if Path(str(db) + suffix).exists():
            shutil.copy(str(db) + suffix, str(copy) + suffix)
    con = sqlite3.connect(copy)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'qido\\_%' ESCAPE '\\'")]
        for name in names if drop else []:
            con.execute(f'DROP TABLE "{name}"')
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("VACUUM")
    finally:
        con.close()
    data = copy.read_bytes()
    wal = Path(str(copy) + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b""), names


def test_phi_canaries_stay_out_of_logs_index_and_answers(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    # The subprocess reads conf/node.toml in its working directory (tmp_path): ct-body on every CT series.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "node.toml").write_text(
        f'[inference]\nmodels_dir = "{ENGINES}"\nbackends = ["onnxruntime"]\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = []\n'
        '[routing.rules.match]\nmodality = "CT"\n', encoding="utf-8")
    api_port = free_port()
    serve = ServeProcess(root, free_port(), {"DICOM_NODE__LOGGING__LEVEL": "DEBUG",
                                             "DICOM_NODE__ASSEMBLY__QUIET_PERIOD": "0.5",
                                             "DICOM_NODE__ASSEMBLY__POLL_INTERVAL": "0.1"})
    serve.env["DICOM_NODE__API__PORT"] = str(api_port)
    # The check reads the SQLite file's bytes (freed pages included): the embedded backend, always.
    serve.env.pop("DICOM_NODE__STORAGE__DATABASE", None)
    serve.start()
    base = f"http://127.0.0.1:{api_port}"
    answers: dict[str, str] = {}

    def keep(label: str, response: httpx.Response) -> httpx.Response:
        answers[label] = response.text
        return response

    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 60, interval=0.2)
        good = canary_series("phi-good")
        assert set(send_all(serve.port, good)) == {0}
        # A corrupt series: its pixel data cut short (refused at ingest or failed in its job, with a reason).
        bad = canary_series("phi-bad", slices=2)
        for ds in bad:
            ds.PixelData = ds.PixelData[:100]
        send_all(serve.port, bad)
        stow_body, stow_type = multipart_related([part10(ds) for ds in canary_series("phi-stow", slices=2)])
        stow = keep("stow", httpx.post(f"{base}/dicomweb/studies", content=stow_body, headers={"Content-Type": stow_type},
                                timeout=60))
        one = part10(good[0])
        keep("predict", httpx.post(f"{base}/v1/models/ct-body:predict", timeout=120, json={"instances": [
            {"input_bytes": base64.b64encode(one).decode()},
            {"input_bytes": base64.b64encode(part10(bad[0])).decode()}]}))
        up_body, up_type = multipart_related([part10(ds) for ds in canary_series("phi-session", slices=2)])
        session = keep("session", httpx.put(f"{base}/v1/sessions", content=up_body, headers={"Content-Type": up_type},
                                            timeout=60))
        assert stow.status_code == 200 and session.status_code == 200, (stow.text, session.text)
        if session.status_code == 200:
            sid = session.json()["session_id"]
            keep("session-get", httpx.get(f"{base}/v1/sessions/{sid}", timeout=30))
            keep("session-predict", httpx.post(f"{base}/v1/models/ct-body:predict", timeout=120,
                                               json={"instances": [{"session_id": sid}]}))

        def jobs_settled() -> bool:
            items = httpx.get(f"{base}/v1/jobs", timeout=30).json().get("jobs", [])
            series = [j for j in items if j.get("kind") != "invocation"]
            return len(series) >= 1 and all(j.get("status") in ("done", "failed", "dead-letter") for j in series)

        wait_for(jobs_settled, 120, interval=0.5)
        jobs = keep("jobs", httpx.get(f"{base}/v1/jobs", timeout=30))
        for job in jobs.json().get("jobs", []):
            keep(f"job-{job['id']}", httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=30))
        keep("worklist", httpx.get(f"{base}/v1/worklist", timeout=30))
        keep("results", httpx.get(f"{base}/v1/studies/{good[0].StudyInstanceUID}/results", timeout=30))
        keep("metrics", httpx.get(f"{base}/metrics", timeout=30))
        keep("readyz", httpx.get(f"{base}/readyz", timeout=30))
        keep("not-found", httpx.get(f"{base}/v1/jobs/{CANARIES['PatientID']}", timeout=30))
        # The jobs ran and wrote results (the corrupt series is refused at ingest, the refusal logged;
        # its failure as a predict instance is in the predict answer).
        assert "done" in {j.get("status") for j in jobs.json().get("jobs", [])}, jobs.text
    finally:
        time.sleep(0.5)
        stderr = serve.stop().decode("utf-8", "replace")
    assert "DEBUG" in stderr, "the node did not log at DEBUG: the test would prove nothing"
    assert leaks(stderr) == [], [line for line in stderr.splitlines() if leaks(line)][:5]
    leaked_answers = {label: leaks(text) for label, text in answers.items() if leaks(text)}
    assert leaked_answers == {}, json.dumps(leaked_answers)
    index, dropped = index_without_qido(root / "index.sqlite3", tmp_path)
    assert leaks(index) == [], "the index holds patient attributes outside the qido_* tables"
    if dropped:
        # Positive control: the same search finds the canaries where they are by design.
        control, _ = index_without_qido(root / "index.sqlite3", tmp_path, drop=False)
        assert CANARIES["PatientID"] in leaks(control)
