"""``kind = "object"`` pollers against real emulators: a CT series uploaded to a prefix is ingested and routed.

The files are written through each emulator's own API (``ObjectPeer.seed``), read by the
node through :class:`dicom_node.objects.ObjectStores`, and stored through the same sink and
ingest checks as a C-STORE; the job runs on the embedded ONNX Runtime model.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from dicom_node.config.sources import Poller
from dicom_node.node import Node
from dicom_node.sources.objects import decode_mark, encode_mark
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.objects_peers import ObjectPeer

NAME = "bucket"
RULE = {"name": "ct", "models": ["ct-body"], "match": {"modality": "CT"}}


def engines() -> str:
    return str(Path(__file__).resolve().parents[1] / "engines")


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def upload(peer: ObjectPeer, folder: str, datasets: list[Dataset]) -> None:
    for ds in datasets:
        peer.seed(f"{folder}/{ds.InstanceNumber:04d}.dcm", part10(ds))


def start(start_node: Any, peer: ObjectPeer, prefix: str, root: Path | None = None,
          objects: dict[str, Any] | None = None, **poller: Any) -> Node:
    entry = {"name": NAME, "kind": "object", "url": f"{peer.scheme}://inputs/{prefix}", "interval": 3600.0,
             "settle": 0.0, "backoff_initial": 0.3, "backoff_max": 2.0, **poller}
    node: Node = start_node(root=root, api={"enabled": False}, sources={"pollers": [entry]},
                            routing={"rules": [RULE]}, inference={"models_dir": engines()},
                            objects=objects or peer.section)
    return node


def row(node: Node) -> dict[str, Any]:
    assert node.pollers is not None
    return node.pollers.status().get(NAME, {})


def job_states(node: Node) -> list[str]:
    conn = node.index.reader()
    try:
        return [r[0] for r in conn.execute("SELECT state FROM jobs ORDER BY created_at")]
    finally:
        conn.close()


# -- configuration and the watermark (no peer) --------------------------------------------------------------------


def test_object_pollers_need_a_bucket_prefix_and_no_credentials_of_their_own() -> None:
    ok = Poller(name="b", kind="object", url="gs://inputs/incoming")
    assert ok.settle == 30.0 and ok.concurrency == 4
    for bad, why in (({"url": ""}, "bucket prefix"), ({"url": "https://inputs/x"}, "bucket prefix"),
                     ({"url": "s3://inputs/../x"}, "bucket prefix"),
                     ({"url": "s3://inputs/x", "auth": {"type": "bearer", "token": "t"}}, "from \\[objects\\]"),
                     ({"url": "s3://inputs/x", "settle": -1}, "settle")):
        with pytest.raises(ValidationError, match=why):
            Poller.model_validate({"name": "b", "kind": "object", **bad})


def test_watermarks_order_by_time_then_key_digest_and_foreign_ones_are_ignored() -> None:
    t = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    text = encode_mark(t, "DOE^JANE/b|c.dcm")
    assert "DOE" not in text  # the index and `sources list` never show a key
    mark = decode_mark(text)
    assert mark is not None and mark[0] == "2026-01-02T03:04:05.000006+00:00" and len(mark[1]) == 32
    assert decode_mark(encode_mark(t, "a/b")) != decode_mark(encode_mark(t, "a/c"))  # equal times: keys still differ
    later = decode_mark(encode_mark(t + dt.timedelta(microseconds=1), "a"))
    assert later is not None and all(m < later for m in (decode_mark(encode_mark(t, k)) for k in "xyz") if m)
    for foreign in (None, "", "20260101", "not a time|key"):
        assert decode_mark(foreign) is None


# -- against the emulators ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peer_name", ["s3_server", "gcs_emulator"])
def test_uploaded_series_is_ingested_once_and_routed(start_node: Any, peer_name: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    peer: ObjectPeer = request.getfixturevalue(peer_name)
    prefix = f"in-{peer_name}"
    series = list(ct_datasets(SeriesSpec(slices=6, rows=32, columns=32, seed=f"bucketsrc-{peer_name}")))
    upload(peer, f"{prefix}/series-1", series)
    peer.seed(f"{prefix}/series-1/notes.txt", b"not a DICOM file")  # refused by the ingest checks, not fatal
    peer.seed(f"{prefix}-other/0001.dcm", part10(series[0]))  # a sibling prefix is not polled
    root = tmp_path / "node"
    node = start(start_node, peer, prefix, root=root)
    assert wait_for(lambda: row(node).get("polls", 0) >= 1, timeout=30), row(node)
    assert row(node)["state"] == "idle" and row(node)["retrieved"] == 6, row(node)
    conn = node.index.reader()
    stored = conn.execute("SELECT sop_instance_uid, source, calling_ae FROM instances").fetchall()
    conn.close()
    assert {r[0] for r in stored} == {str(ds.SOPInstanceUID) for ds in series}
    assert {(r[1], r[2]) for r in stored} == {(f"object:{NAME}", NAME)}
    assert wait_for(lambda: job_states(node) == ["done"], timeout=90), job_states(node)
    assert decode_mark(row(node)["watermark"]) is not None
    assert not any(node.spool.tmp.iterdir()), "downloads left behind"

    # A second poll reads nothing: everything listed is below the watermark.
    assert node.pollers is not None
    report = node.pollers.run_cycle(NAME)
    assert report.ok and report.arrived == [] and report.retrieved == 0 and report.complete
    node.stop()
    # Nor does a restarted node on the same storage root: the watermark persisted.
    again = start(start_node, peer, prefix, root=root)
    assert wait_for(lambda: row(again).get("polls", 0) >= 2, timeout=30), row(again)
    assert row(again)["last_retrieved"] == 0 and again.index.counts()["instances"] == 6
    assert job_states(again) == ["done"]


def reads(node: Node) -> int:
    """Pseudo-associations the poller opened: one per folder it read anything from."""
    conn = node.index.reader()
    try:
        return int(conn.execute("SELECT COUNT(*) FROM associations WHERE calling_ae = ?", (NAME,)).fetchone()[0])
    finally:
        conn.close()


def test_a_restarted_node_does_not_read_again_what_it_stored(start_node: Any, s3_server: ObjectPeer,
                                                             tmp_path: Path) -> None:
    # max_objects equal to the listing: the scan may be incomplete, so the watermark stays and only
    # the seen set persisted in the index keeps the restarted node from reading the folder again.
    prefix = "in-restart"
    upload(s3_server, f"{prefix}/s", list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="bucketrst"))))
    root = tmp_path / "node"
    node = start(start_node, s3_server, prefix, root=root, max_objects=3)
    assert wait_for(lambda: row(node).get("polls", 0) >= 1, timeout=30), row(node)
    assert row(node)["retrieved"] == 3 and row(node)["watermark"] is None and reads(node) == 1, row(node)
    node.stop()
    again = start(start_node, s3_server, prefix, root=root, max_objects=3)
    assert wait_for(lambda: row(again).get("polls", 0) >= 2, timeout=30), row(again)
    assert row(again)["state"] == "idle" and row(again)["last_retrieved"] == 0, row(again)
    assert reads(again) == 1  # the start-up poll read no object: no pseudo-association was opened


def test_a_folder_still_growing_waits_until_its_listing_settles(start_node: Any, s3_server: ObjectPeer) -> None:
    prefix = "in-growing"
    series = list(ct_datasets(SeriesSpec(slices=5, rows=32, columns=32, seed="bucketgrow")))
    upload(s3_server, f"{prefix}/s", series[:3])
    node = start(start_node, s3_server, prefix, settle=1.0)
    assert node.pollers is not None
    assert wait_for(lambda: row(node).get("polls", 0) >= 1, timeout=30), row(node)
    assert node.index.counts()["instances"] == 0  # first sight: the folder may still be uploading
    upload(s3_server, f"{prefix}/s", series[3:])
    report = node.pollers.run_cycle(NAME)
    assert report.ok and report.retrieved == 0 and not report.complete  # it grew: settling starts again
    time.sleep(1.2)
    report = node.pollers.run_cycle(NAME)
    assert report.ok and report.retrieved == 5 and report.complete
    assert [(a.series_instance_uid, a.stored) for a in report.arrived] == [(str(series[0].SeriesInstanceUID), 5)]
    # One pseudo-association for the folder, released, so the series completes with all five.
    assert wait_for(lambda: node.index.counts()["complete"] == 1, timeout=20)
    assert node.pollers.run_cycle(NAME).retrieved == 0


def test_wrong_credential_stops_the_source_with_the_reason(start_node: Any, s3_server: ObjectPeer) -> None:
    node = start(start_node, s3_server, "in-denied", objects=s3_server.wrong_section)
    assert wait_for(lambda: row(node).get("state") == "stopped", timeout=30), row(node)
    assert "access denied by S3 for inputs" in row(node)["reason"], row(node)
    assert node.index.counts()["instances"] == 0


def test_objects_over_the_memory_bound_stream_through_the_spool(start_node: Any, azurite: ObjectPeer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_node.sources.objects as bucket

    # Every object counts as large here: read by ObjectStores.download into a spool temporary file.
    monkeypatch.setattr(bucket, "MEMORY_READ", 0)
    series = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="bucketstream")))
    upload(azurite, "in-stream/s", series)
    node = start(start_node, azurite, "in-stream")
    assert wait_for(lambda: row(node).get("polls", 0) >= 1, timeout=30), row(node)
    assert row(node)["retrieved"] == 3 and node.index.counts()["instances"] == 3, row(node)
    assert not any(node.spool.tmp.iterdir()), "downloads left behind"


def test_an_object_over_the_cap_is_skipped_for_good_and_its_key_not_logged(
        start_node: Any, s3_server: ObjectPeer, caplog: pytest.LogCaptureFixture) -> None:
    series = list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="bucketcap")))
    upload(s3_server, "in-cap/s", series)
    s3_server.seed("in-cap/s/DOE^JANE-scan.dcm", b"\0" * (3 << 20))  # over scp.max_dataset_bytes + File Meta room
    entry = {"name": NAME, "kind": "object", "url": "s3://inputs/in-cap", "interval": 3600.0, "settle": 0.0}
    with caplog.at_level("INFO"):
        node: Node = start_node(api={"enabled": False}, sources={"pollers": [entry]}, objects=s3_server.section,
                                scp={"max_dataset_bytes": 1 << 20})
        assert wait_for(lambda: row(node).get("polls", 0) >= 1, timeout=30), row(node)
    assert row(node)["state"] == "idle" and row(node)["retrieved"] == 2, row(node)
    assert "DOE^JANE" not in caplog.text and "DOE^JANE" not in str(row(node))
    assert "over the cap" in caplog.text
    assert node.pollers is not None
    report = node.pollers.run_cycle(NAME)  # skipped for good: the watermark moved past it
    assert report.ok and report.arrived == [] and "DOE^JANE" not in (row(node)["watermark"] or "")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _cli_config(peer: ObjectPeer, tmp_path: Path, prefix: str, **poller: Any) -> Path:
    """A node.toml with one ``kind = "object"`` poller of ``prefix`` on ``peer`` (settle 0)."""
    store = "\n".join(f"{k} = {_toml(v)}" for k, v in peer.section[peer.store].items())
    extra = "\n".join(f"{k} = {_toml(v)}" for k, v in poller.items())
    config = tmp_path / "node.toml"
    config.write_text(f"""
[scp]
port = 0
[api]
enabled = false
[storage]
root = "{tmp_path / 'node'}"
min_free_bytes = 0
[objects.{peer.store}]
{store}

[[sources.pollers]]
name = "{NAME}"
kind = "object"
url = "{peer.scheme}://inputs/{prefix}"
settle = 0.0
{extra}
""", encoding="utf-8")
    return config


def _poll_now(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    from dicom_node.cli import main

    assert main(["--config", str(config), "sources", "poll-now", NAME, "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["ok"], report
    return report


def test_poll_now_reads_a_bucket_from_the_command_line(s3_server: ObjectPeer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.cli import main

    upload(s3_server, "in-cli/s", list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="bucketcli"))))
    config = _cli_config(s3_server, tmp_path, "in-cli")
    report = _poll_now(config, capsys)
    assert report["retrieved"] == 3 and report["complete"], report
    assert main(["--config", str(config), "sources", "list"]) == 0
    listed = capsys.readouterr().out
    assert NAME in listed and "object" in listed, listed
    assert _poll_now(config, capsys)["retrieved"] == 0


def test_handled_objects_persist_so_a_fresh_process_reads_none_again(s3_server: ObjectPeer, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The seen set lives in the index: each ``poll-now`` is a new process state on the same storage root.

    ``max_objects`` equal to the listing keeps the watermark where it is (the scan may be
    incomplete), so only the persisted seen set keeps handled objects from being read again.
    """
    prefix = "in-seen"
    b = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="bucketseen-b")))
    upload(s3_server, f"{prefix}/b", b)
    config = _cli_config(s3_server, tmp_path, prefix, max_objects=3)
    first = _poll_now(config, capsys)
    assert first["retrieved"] == 3 and not first["complete"], first  # the listing reached max_objects
    assert [(a["stored"], a["duplicates"]) for a in first["arrived"]] == [(3, 0)]

    # Restarted: nothing read, so nothing stored again (arrived lists every object that went through the sink).
    again = _poll_now(config, capsys)
    assert again["arrived"] == [] and again["retrieved"] == 0, again

    # A new object is taken ("a/" lists first, so it is within max_objects; b/0003 is then left out).
    a = list(ct_datasets(SeriesSpec(slices=1, rows=32, columns=32, seed="bucketseen-a")))
    upload(s3_server, f"{prefix}/a", a)
    new = _poll_now(config, capsys)
    assert [(x["series_instance_uid"], x["stored"]) for x in new["arrived"]] == [(str(a[0].SeriesInstanceUID), 1)]

    # A rewritten object (new ETag) is a new version: read again; the ingestor keeps the first copy.
    changed = b[1].copy()
    changed.SeriesDescription = "rewritten"
    s3_server.seed(f"{prefix}/b/{changed.InstanceNumber:04d}.dcm", part10(changed))
    rewritten = _poll_now(config, capsys)
    assert [(x["stored"], x["duplicates"]) for x in rewritten["arrived"]] == [(0, 1)], rewritten
    assert _poll_now(config, capsys)["arrived"] == []
