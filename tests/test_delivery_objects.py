"""``kind = "object"`` destinations: a job's SEG and SR written to a bucket prefix on real emulators.

S3 (moto, IAM auth on), Azure Blob (Azurite, Shared Key checked) and GCS (gcp-storage-emulator
behind tests/objects_peers.py's ETag shim, ``gcs_write_emulator``: fake-gcs-server cannot store
obstore's XML-API PUT) take writes through the node's client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from dicom_node.config.delivery import DeliveryConfig, ObjectDestination
from dicom_node.config.objects import ObjectsConfig
from dicom_node.delivery.deliverer import Deliverer
from dicom_node.delivery.objects import object_url
from dicom_node.errors import DeliveryError
from dicom_node.net.retry import RetryPolicy
from dicom_node.node import Node
from dicom_node.objects import ObjectUrl
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.objects_peers import ObjectPeer
from tests.scu import send_all

RULE = {"name": "ct", "models": ["ct-body"], "destinations": ["bucket"], "match": {"modality": "CT"}}
RETRY = {"attempts": 3, "initial": 0.2, "factor": 2.0, "cap": 0.5}


def engines() -> str:
    return str(Path(__file__).resolve().parents[1] / "engines")


def jobs(node: Node) -> list[dict[str, Any]]:
    conn = node.index.reader()
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY created_at")]
    finally:
        conn.close()


def results(node: Node) -> list[dict[str, Any]]:
    conn = node.index.reader()
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM results ORDER BY kind")]
    finally:
        conn.close()


def wait_state(node: Node, state: str, timeout: float = 90.0) -> dict[str, Any]:
    from tests.conftest import wait_for

    assert wait_for(lambda: [j["state"] for j in jobs(node)] == [state], timeout=timeout), jobs(node)
    return jobs(node)[0]


def start(start_node: Any, peer: ObjectPeer, url: str, section: dict[str, Any] | None = None) -> Node:
    node: Node = start_node(routing={"rules": [RULE]}, inference={"models_dir": engines()},
                            delivery={"destinations": [{"kind": "object", "name": "bucket", "url": url}],
                                      "retry": RETRY},
                            objects=section or peer.section)
    return node


# -- configuration and naming (no peer) --------------------------------------------------------------------------


def test_object_destinations_parse_and_bad_urls_are_refused_at_load() -> None:
    config = DeliveryConfig.model_validate({"destinations": [{"kind": "object", "name": "b", "url": "s3://results/ai"}]})
    dest = config.destinations[0]
    assert isinstance(dest, ObjectDestination) and dest.prefix() == ObjectUrl("s3", "results", "ai")
    for bad in ("https://results/ai", "s3://Results/ai", "s3://results/../ai", "s3://results/a?sig=1",
                "s3://user@results/ai"):
        with pytest.raises(ValidationError, match="object URL"):
            ObjectDestination(name="b", url=bad)
    with pytest.raises(ValidationError):
        ObjectDestination(name="b", url="s3://results/ai", endpoint="http://x")  # type: ignore[call-arg]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid UIDs set on purpose
def test_keys_are_built_from_valid_uids_only() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    assert str(object_url(ObjectUrl.parse("az://results/out/"), ds)) == "az://results/out/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert str(object_url(ObjectUrl.parse("gs://results/"), ds)) == "gs://results/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    for bad in ("../../etc", "1.2/3", "", "1..2", "1." + "2" * 70):
        ds.SeriesInstanceUID = bad
        with pytest.raises(DeliveryError, match="no valid SeriesInstanceUID") as caught:
            object_url(ObjectUrl.parse("s3://results/ai"), ds)
        assert not caught.value.retryable


# -- a job delivered to an emulator ------------------------------------------------------------------------------


@pytest.mark.parametrize("peer_name", ["s3_server", "azurite", "gcs_write_emulator"])
def test_job_results_land_in_the_bucket_once(start_node: Any, peer_name: str, request: pytest.FixtureRequest) -> None:
    peer: ObjectPeer = request.getfixturevalue(peer_name)
    prefix = f"ai-{peer_name}"
    node = start(start_node, peer, f"{peer.scheme}://results/{prefix}")
    datasets = list(ct_datasets(SeriesSpec(slices=4, rows=32, columns=32, seed=f"objdeliver-{peer_name}")))
    assert send_all(node.scp.port, datasets) == [0] * 4
    wait_state(node, "done")
    rows = results(node)
    assert [r["kind"] for r in rows] == ["SEG", "SR"]
    paths = []
    for row in rows:
        key = f"{prefix}/{row['study_instance_uid']}/{row['series_instance_uid']}/{row['sop_instance_uid']}.dcm"
        local = node.config.storage.root / row["path"]
        assert peer.fetch(key) == local.read_bytes(), f"{key} is not the stored result"
        paths.append(local)
    assert str(rows[0]["study_instance_uid"]) == str(datasets[0].StudyInstanceUID)
    # The ledger says both were sent: delivering the same objects again writes nothing.
    again = Deliverer.from_config(node.config.delivery, node.objects).deliver(paths, "bucket", node.writer.run)
    assert [o.state for o in again.objects] == ["already_sent", "already_sent"]


@pytest.mark.parametrize("peer_name", ["s3_server", "azurite"])
def test_wrong_credential_fails_the_delivery_with_the_reason(start_node: Any, peer_name: str,
                                                             request: pytest.FixtureRequest) -> None:
    peer: ObjectPeer = request.getfixturevalue(peer_name)
    node = start(start_node, peer, f"{peer.scheme}://results/denied", section=peer.wrong_section)
    assert send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32,
                                                               seed=f"objdenied-{peer_name}")))) == [0] * 2
    job = wait_state(node, "dead-letter")
    assert "bucket:" in job["reason"] and "access denied by" in job["reason"], job["reason"]
    secret = str(peer.wrong_section).split("'")  # no credential value may reach the reason
    assert not any(len(v) > 20 and v in job["reason"] for v in secret)


def test_bucket_outside_the_allowlist_is_refused_at_load_and_at_delivery(tmp_path: Path) -> None:
    from dicom_node.config import NodeConfig
    from dicom_node.index import IndexWriter
    from dicom_node.objects import ObjectStores

    destination = {"kind": "object", "name": "bucket", "url": "s3://elsewhere/ai"}
    with pytest.raises(ValidationError, match=r"'elsewhere' of s3:// is not in \[objects.s3\] allowed_buckets"):
        NodeConfig.model_validate({"delivery": {"destinations": [destination]},
                                   "objects": {"s3": {"anonymous": True, "allowed_buckets": ["results"]}}})
    # The deliverer checks again before any request (no store is configured at all here).
    ds = next(iter(ct_datasets(SeriesSpec(slices=1, rows=8, columns=8, seed="objrefused"))))
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    writer = IndexWriter(tmp_path / "index.sqlite")
    writer.start()
    try:
        result = Deliverer([ObjectDestination(**destination)], RetryPolicy(), objects=ObjectStores(ObjectsConfig()))
        outcome = result.deliver([path], "bucket", writer.run).objects[0]
    finally:
        writer.stop()
    assert outcome.state == "dead" and "no buckets are allowed" in outcome.detail, outcome


def test_unreachable_store_is_retried_not_dead(start_node: Any, s3_server: ObjectPeer, tmp_path: Path) -> None:
    from tests.conftest import free_port, wait_for

    section = {**s3_server.section, "s3": {**s3_server.section["s3"], "endpoint": f"http://127.0.0.1:{free_port()}"}}
    node = start(start_node, s3_server, "s3://results/down", section=section)
    assert send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32,
                                                               seed="objdown")))) == [0] * 2
    # Retries on the ledger's schedule, then dead-lettered when [delivery.retry] attempts are spent.
    assert wait_for(lambda: [j["state"] for j in jobs(node)] in (["delivering"], ["dead-letter"]), timeout=90)
    job = wait_state(node, "dead-letter", timeout=60)
    assert "gave up after 3 attempts: object destination bucket: S3" in job["reason"], job["reason"]
