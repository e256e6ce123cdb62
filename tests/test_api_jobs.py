"""Jobs endpoints against a real uvicorn server: filters, pagination, lookup, retry."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from dicom_node.api.routers.jobs import epoch
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import send_all

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
RULE = {"name": "any", "models": ["ct-body"], "destinations": [], "match": {}}


def api(node: Node, path: str, **params: str | float | None) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{node.api.port}{path}", params=params)


def states(node: Node) -> list[str]:
    return sorted(j["status"] for j in api(node, "/v1/jobs").json()["jobs"])


@pytest.fixture
def node_with_jobs(start_node: Callable[..., Node]) -> tuple[Node, str, str]:
    """One done CT job and one failed MR job (contract violation)."""
    node: Node = start_node(routing={"rules": [RULE]}, inference={"models_dir": ENGINES})
    ct = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="jobs-ct")))
    assert send_all(node.scp.port, ct) == [0, 0, 0]
    assert wait_for(lambda: states(node) == ["done"], timeout=60)
    mr = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="jobs-mr", modality="MR")))
    assert send_all(node.scp.port, mr) == [0, 0]
    assert wait_for(lambda: states(node) == ["done", "failed"], timeout=60), states(node)
    return node, str(ct[0].StudyInstanceUID), str(mr[0].StudyInstanceUID)


def test_list_filter_get_and_retry(node_with_jobs: tuple[Node, str, str]) -> None:
    node, ct_study, mr_study = node_with_jobs
    page = api(node, "/v1/jobs").json()
    assert [j["status"] for j in page["jobs"]] == ["failed", "done"] and page["next"] is None
    done = api(node, "/v1/jobs", status="done").json()["jobs"]
    assert len(done) == 1 and done[0]["study_uid"] == ct_study and done[0]["model"] == "ct-body"
    assert set(done[0]["stage_times"]) == {"validate", "decode", "infer", "write"}
    assert sorted(o["kind"] for o in done[0]["results"]) == ["SEG", "SR"]
    assert [j["study_uid"] for j in api(node, "/v1/jobs", study_uid=mr_study).json()["jobs"]] == [mr_study]
    assert api(node, "/v1/jobs", model="other").json()["jobs"] == []
    assert api(node, "/v1/jobs", since=time.time() + 60).json()["jobs"] == []
    assert len(api(node, "/v1/jobs", until="2100-01-01T00:00:00Z").json()["jobs"]) == 2
    assert api(node, "/v1/jobs", since="yesterday").status_code == 400
    assert api(node, "/v1/jobs", status="bogus").status_code == 400
    assert api(node, "/v1/jobs", limit=501).status_code == 400
    failed = api(node, "/v1/jobs", status="failed").json()["jobs"][0]
    assert "contract" in failed["reason"] and any(i["keyword"] == "Modality" for i in failed["details"])
    one = api(node, f"/v1/jobs/{failed['id']}")
    assert one.status_code == 200 and one.json()["id"] == failed["id"]
    assert api(node, "/v1/jobs/0123456789abcdef01234567").status_code == 404
    base = f"http://127.0.0.1:{node.api.port}"
    conflict = httpx.post(f"{base}/v1/jobs/{done[0]['id']}/retry")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_retryable"
    retried = httpx.post(f"{base}/v1/jobs/{failed['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] in ("queued", "validating", "failed")
    assert wait_for(lambda: api(node, f"/v1/jobs/{failed['id']}").json()["attempts"] == 2, timeout=30)
    assert httpx.post(f"{base}/v1/jobs/nope/retry").status_code == 404


def test_cursor_and_offset_pagination(node_with_jobs: tuple[Node, str, str]) -> None:
    node, _, _ = node_with_jobs
    first = api(node, "/v1/jobs", limit=1).json()
    assert len(first["jobs"]) == 1 and first["next"]
    second = api(node, "/v1/jobs", limit=1, cursor=first["next"]).json()
    assert len(second["jobs"]) == 1 and second["next"] is None
    assert first["jobs"][0]["id"] != second["jobs"][0]["id"]
    assert api(node, "/v1/jobs", limit=1, offset=1).json()["jobs"][0]["id"] == second["jobs"][0]["id"]
    assert api(node, "/v1/jobs", cursor="!!not-a-cursor").status_code == 400


def invoke(node: Node, examination_id: str) -> str:
    """POST one DICOM slice to /v1/invocations with an Examination-ID; returns the request UUID."""
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=32, columns=32, seed="jobs-inv"))).save_as(buf, enforce_file_format=True)
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", headers={"Examination-ID": examination_id},
                   files={"image": ("scan.dcm", buf.getvalue(), "application/dicom")}, timeout=30)
    assert r.status_code == 202, r.text
    return str(r.json()["request_uuid"])


def test_invocation_found_by_request_uuid_and_examination_id(node_with_jobs: tuple[Node, str, str]) -> None:
    node, ct_study, _ = node_with_jobs
    rid = invoke(node, "EX-7")
    assert wait_for(lambda: api(node, f"/v1/jobs/{rid}").json()["status"] == "done", timeout=30)
    job = api(node, f"/v1/jobs/{rid}").json()
    assert job["id"] == rid and job["request_uuid"] == rid and job["kind"] == "invocation"
    assert job["examination_id"] == "EX-7" and job["model"] == "ct-body" and job["study_uid"] is None
    assert job["webhook_state"] == "none" and job["results"] == [] and job["attempts"] == 1
    by_exam = api(node, "/v1/jobs", examination_id="EX-7").json()["jobs"]
    assert [j["id"] for j in by_exam] == [rid]
    assert api(node, "/v1/jobs", examination_id="EX-8").json()["jobs"] == []
    # One list, newest first: the invocation, then the two series jobs, which have no request UUID.
    listed = api(node, "/v1/jobs").json()["jobs"]
    assert [j["kind"] for j in listed] == ["invocation", "series", "series"]
    assert [j["request_uuid"] for j in listed[1:]] == [None, None]
    assert [j["id"] for j in api(node, "/v1/jobs", status="done", model="ct-body").json()["jobs"]][0] == rid
    assert rid not in [j["id"] for j in api(node, "/v1/jobs", study_uid=ct_study).json()["jobs"]]
    second = api(node, "/v1/jobs", limit=1, cursor=api(node, "/v1/jobs", limit=1).json()["next"]).json()
    assert second["jobs"][0]["kind"] == "series"
    retry = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/jobs/{rid}/retry")
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "not_retryable"


def test_epoch() -> None:
    assert epoch(10.5) == 10.5 and epoch(None) is None
    assert epoch(datetime(1970, 1, 1, 0, 1)) == 60.0
    assert epoch(datetime(1970, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))) == 0.0


def test_metrics_stage_histograms_and_batches(node_with_jobs: tuple[Node, str, str]) -> None:
    node, _, _ = node_with_jobs
    text = api(node, "/metrics").text
    # One job ran every stage; the failed one stopped at validation.
    assert 'dicom_node_job_stage_seconds_count{stage="infer"} 1.0' in text
    assert 'dicom_node_job_stage_seconds_count{stage="validate"} 1.0' in text
    assert 'dicom_node_job_stage_seconds_bucket{le="+Inf",stage="write"} 1.0' in text
    assert 'dicom_node_inference_batch_size_count{model="ct-body"}' in text
    assert "dicom_node_job_retries_total 0.0" in text and "dicom_node_webhook_failures_total 0.0" in text
