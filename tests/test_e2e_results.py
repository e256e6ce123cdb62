"""End to end on the embedded default (ONNX Runtime CPU): C-STORE in, SEG and SR out to a destination."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import ServeProcess, free_port, node_index, require_tool, storage_env, wait_for
from tests.receiver import RecordingSCP as Receiver
from tests.scu import send_all

CT_RULE = {"name": "ct", "models": ["ct-body"], "destinations": ["pacs"], "match": {"modality": "CT"}}


def destination(port: int) -> dict:
    return {"destinations": [{"kind": "dimse", "name": "pacs", "ae_title": "RESULTS_SCP", "host": "127.0.0.1",
                              "port": port}],
            "retry": {"attempts": 5, "initial": 0.5, "factor": 2.0, "cap": 2.0}}


def jobs(node: Node) -> list[dict]:
    conn = node.index.reader()
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY created_at")]
    finally:
        conn.close()


def engines() -> str:
    return str(Path(__file__).resolve().parents[1] / "engines")


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_series_to_seg_and_sr_at_the_destination(start_node, receiver: Receiver, tmp_path: Path) -> None:
    node: Node = start_node(routing={"rules": [CT_RULE]}, delivery=destination(receiver.port),
                            inference={"models_dir": engines()})
    datasets = list(ct_datasets(SeriesSpec(slices=8, rows=64, columns=64, seed="e2e")))
    assert send_all(node.scp.port, datasets) == [0] * 8
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=60), jobs(node)
    received = {str(ds.SOPClassUID): ds for ds in receiver.datasets()}
    assert set(received) == {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"}
    seg = received["1.2.840.10008.5.1.4.1.1.66.4"]
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel
    mask = seg.pixel_array
    assert mask.any(), "the body of the phantom must be segmented"
    job = jobs(node)[0]
    assert set(json.loads(job["stage_times"])) == {"validate", "decode", "infer", "write"}
    conn = node.index.reader()
    kinds = sorted(r[0] for r in conn.execute("SELECT kind FROM results"))
    conn.close()
    assert kinds == ["SEG", "SR"]


def test_received_results_pass_dciodvfy(start_node, receiver: Receiver, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "apt-get install dicom3tools")
    node: Node = start_node(routing={"rules": [CT_RULE]}, delivery=destination(receiver.port),
                            inference={"models_dir": engines()})
    send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=4, rows=32, columns=32, seed="iod"))))
    assert wait_for(lambda: len(receiver.received) == 2, timeout=60)
    for n, ds in enumerate(receiver.datasets()):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors


def test_input_failing_the_contract_ends_failed_with_the_issues(start_node, receiver: Receiver) -> None:
    rule = {**CT_RULE, "match": {}}
    node: Node = start_node(routing={"rules": [rule]}, delivery=destination(receiver.port),
                            inference={"models_dir": engines()})
    datasets = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="mr", modality="MR")))
    for ds in datasets:
        del ds.RescaleSlope
    assert send_all(node.scp.port, datasets) == [0, 0, 0]
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["failed"], timeout=30), jobs(node)
    job = jobs(node)[0]
    assert "contract" in job["reason"]
    issues = json.loads(job["details"])
    assert {(i["keyword"], i["rule"]) for i in issues} >= {("Modality", "accepted-values"), ("RescaleSlope", "required")}
    assert all(i["tag"] for i in issues)
    assert receiver.datasets() == []


def test_unrouted_series_is_kept_and_reported(start_node) -> None:
    node: Node = start_node(routing={"rules": [CT_RULE]}, inference={"models_dir": engines()})
    datasets = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="us", modality="US")))
    assert send_all(node.scp.port, datasets) == [0, 0]
    conn = node.index.reader()
    try:
        assert wait_for(lambda: conn.execute("SELECT COUNT(*) FROM unrouted").fetchone()[0] == 1, timeout=10)
        facts = json.loads(conn.execute("SELECT facts FROM unrouted").fetchone()[0])
    finally:
        conn.close()
    assert facts["modality"] == "US"
    assert jobs(node) == [] and node.index.counts()["instances"] == 2


def test_destination_down_then_up_is_retried_then_done(start_node, tmp_path: Path) -> None:
    port = free_port()
    node: Node = start_node(routing={"rules": [CT_RULE]}, delivery=destination(port),
                            inference={"models_dir": engines()})
    send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="down"))))
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["delivering"], timeout=30), jobs(node)
    receiver = Receiver().start(port)
    try:
        assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=30), jobs(node)
        assert len(receiver.received) == 2
    finally:
        receiver.stop()


def test_refusing_destination_dead_letters_and_retry_replays(start_node, receiver: Receiver) -> None:
    receiver.status = 0xA900
    node: Node = start_node(routing={"rules": [CT_RULE]}, delivery=destination(receiver.port),
                            inference={"models_dir": engines()})
    send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="dead"))))
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["dead-letter"], timeout=30), jobs(node)
    assert "pacs" in jobs(node)[0]["reason"]


def test_kill9_mid_pipeline_loses_no_job_and_delivers_once(tmp_path: Path, receiver: Receiver) -> None:
    """kill -9 while the job runs, restart: the job completes, each result arrives once, same UIDs."""
    root = tmp_path / "node"
    root.mkdir()
    (root.parent / "conf").mkdir()
    config = tmp_path / "conf" / "node.toml"
    config.write_text(
        f'[inference]\nmodels_dir = "{engines()}"\n'
        '[assembly]\nquiet_period = 0.2\npoll_interval = 0.05\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["pacs"]\n'
        '[routing.rules.match]\nmodality = "CT"\n'
        f'[[delivery.destinations]]\nkind = "dimse"\nname = "pacs"\nae_title = "RESULTS_SCP"\nhost = "127.0.0.1"\nport = {receiver.port}\n'
    )
    port = free_port()
    serve = ServeProcess(root, port, {"DICOM_NODE__LOGGING__LEVEL": "WARNING"}).start()
    datasets = list(ct_datasets(SeriesSpec(slices=24, rows=256, columns=256, seed="k9")))
    assert send_all(port, datasets) == [0] * 24

    with node_index(root) as index:

        def job_states() -> list[str]:
            conn = index.reader()
            try:
                return [r[0] for r in conn.execute("SELECT state FROM jobs")]
            finally:
                conn.close()

        assert wait_for(lambda: job_states() != [], timeout=30, interval=0.01)
        serve.stop(signal.SIGKILL)
        first_uids = receiver.uids()
        serve = ServeProcess(root, port, {"DICOM_NODE__LOGGING__LEVEL": "WARNING"}).start()
        try:
            assert wait_for(lambda: job_states() == ["done"], timeout=90), job_states()
        finally:
            serve.stop()
    uids = receiver.uids()
    assert len(uids) == 2 and len(set(uids)) == 2, f"each result exactly once: {uids} (before kill: {first_uids})"
    # A third run of the same model version on the same series derives the same UIDs.
    from dicom_node.writers.uids import result_uids

    expected = result_uids("2.25.", datasets[0].SeriesInstanceUID, "ct-body", "1.0.0")
    assert set(uids) == {expected.seg_sop_instance_uid, expected.sr_sop_instance_uid}


def test_jobs_cli_lists_shows_and_retries_a_dead_letter(start_node, receiver: Receiver, tmp_path: Path) -> None:
    import os

    from tests.conftest import dicom_node_exe

    receiver.status = 0xA900
    root = tmp_path / "cli-node"
    node: Node = start_node(root=root, routing={"rules": [CT_RULE]}, delivery=destination(receiver.port),
                            inference={"models_dir": engines()})
    send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="cli-dead"))))
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["dead-letter"], timeout=30), jobs(node)
    env = dict(os.environ, **storage_env(root))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([dicom_node_exe(), "jobs", *args], env=env, cwd=tmp_path, capture_output=True, text=True)

    listed = [json.loads(line) for line in cli("dead-letter", "--json").stdout.splitlines()]
    assert [j["state"] for j in listed] == ["dead-letter"]
    jid = listed[0]["id"]
    shown = json.loads(cli("show", jid).stdout)
    assert shown["model"] == "ct-body" and [o["kind"] for o in shown["result"]["objects"]] == ["SEG", "SR"]
    assert cli("show", "nope").returncode == 1
    receiver.status = 0x0000
    assert cli("retry", jid).returncode == 0
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=30), jobs(node)
    assert cli("retry", jid).returncode == 1, "a done job is not retried"
    assert len(receiver.received) == 4  # two refused, then two stored


def test_rule_matching_on_the_model_contract_leaves_failing_series_unrouted(start_node) -> None:
    rule = {**CT_RULE, "match": {"model_contract": True}}
    node: Node = start_node(routing={"rules": [rule]}, inference={"models_dir": engines()})
    datasets = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="mrc", modality="MR")))
    assert send_all(node.scp.port, datasets) == [0, 0]
    conn = node.index.reader()
    try:
        assert wait_for(lambda: conn.execute("SELECT COUNT(*) FROM unrouted").fetchone()[0] == 1, timeout=10)
    finally:
        conn.close()
    assert jobs(node) == []
