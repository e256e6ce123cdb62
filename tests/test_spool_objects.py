"""The spool's shared durable copy on object storage (``storage.spool_url``, issue 18), against real servers.

moto's S3 server (tests/objects_peers.py, IAM authentication on) holds the objects; the multi-node test
shares a throwaway PostgreSQL database (tests/pg_peer.py). Checked through the paths users take:

- a C-STORE is answered only after its object is in the bucket and its index row committed (each
  instance checked right after its own response, through moto's API, not the node's client);
- a refused PUT (wrong secret, or a bucket that does not exist) answers 0xA700 and leaves no index
  row, no spool file and no temporary file;
- a node sharing the database and the bucket, with its own empty cache, serves WADO-RS of an
  instance another node received, and another runs that series' job: the files come from the
  bucket, and the SEG and SR it writes land in the bucket too;
- without ``spool_url`` nothing changes: :meth:`Spool.local` is the plain path join.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.dicomweb.multipart import media_type, split
from dicom_node.errors import StorageError
from dicom_node.node import Node
from dicom_node.objects import ObjectStores
from dicom_node.spool import Spool
from dicom_node.spool_objects import ObjectSpool
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.objects_peers import ObjectPeer
from tests.receiver import RecordingSCP as Receiver
from tests.receiver import multipart_related
from tests.scu import associate, send_all
from tests.test_e2e_results import CT_RULE, destination, engines, jobs

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
OUT_OF_RESOURCES = 0xA700
BUCKET = "inputs"


def spool_url(prefix: str, bucket: str = BUCKET) -> dict[str, str]:
    """The ``[storage]`` values of a node keeping its spool's shared copy under ``s3://<bucket>/<prefix>``."""
    return {"spool_url": f"s3://{bucket}/{prefix}"}


def instance_count(node: Node) -> int:
    return node.index.counts()["instances"]


def spooled(node: Node) -> list[Path]:
    """Every file in the node's local spool (the cache, with an object spool) and its temp folder."""
    return sorted(p for p in node.spool.files.rglob("*") if p.is_file()) + sorted(node.spool.tmp.glob("*.part"))


def test_c_store_answers_after_the_object_is_in_the_bucket(start_node, s3_server: ObjectPeer) -> None:
    prefix = f"ack-{uuid.uuid4().hex[:8]}"
    node: Node = start_node(storage=spool_url(prefix), objects=s3_server.section)
    datasets = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="spool-ack")))
    assoc = associate(node.scp.port)
    assert assoc.is_established
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert int(status.Status) == 0
            # Right after this instance's response: its object and its row exist, with the spooled bytes.
            relpath = node.spool.relpath_for(str(ds.SOPInstanceUID))
            stored = s3_server.fetch(f"{prefix}/spool/{relpath}", bucket=BUCKET)
            assert stored is not None, "acknowledged before its object was written"
            assert stored == node.spool.path_for(relpath).read_bytes()
            conn = node.index.reader()
            try:
                assert node.index.has_instance(conn, str(ds.SOPInstanceUID))
            finally:
                conn.close()
    finally:
        assoc.release()
    assert instance_count(node) == 3


@pytest.mark.parametrize("failure", ["wrong secret", "missing bucket"])
def test_a_refused_put_answers_a700_and_leaves_nothing(start_node, s3_server: ObjectPeer, failure: str) -> None:
    if failure == "wrong secret":
        objects, storage = s3_server.wrong_section, spool_url("refused")
    else:  # allowlisted, so the node tries, but the bucket was never created (or was deleted)
        section = {"s3": {**s3_server.section["s3"], "allowed_buckets": [BUCKET, "gone-bucket"]}}
        objects, storage = section, spool_url("refused", bucket="gone-bucket")
    node: Node = start_node(storage=storage, objects=objects)
    datasets = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed=f"spool-refused-{failure}")))
    assert send_all(node.scp.port, datasets[:2]) == [OUT_OF_RESOURCES] * 2
    # STOW-RS: the instance fails with 0xA700 in FailedSOPSequence (PS3.18 10.5.3), the request does not.
    body, ctype = multipart_related([_encode(datasets[2])])
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/dicomweb/studies", content=body,  # type: ignore[union-attr]
                       headers={"content-type": ctype}, timeout=30)
    assert reply.status_code == 409, reply.text
    failed = reply.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[OUT_OF_RESOURCES]]
    assert instance_count(node) == 0
    assert spooled(node) == [], "a refused instance left a file behind"


def test_spool_url_bucket_must_be_allowlisted(start_node, s3_server: ObjectPeer) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"storage.spool_url: bucket 'elsewhere'"):
        start_node(storage=spool_url("x", bucket="elsewhere"), objects=s3_server.section)
    with pytest.raises(ValidationError, match="spool_url"):
        start_node(storage={"spool_url": "s3://inputs/a?sig=1"}, objects=s3_server.section)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _wado_instance(node: Node, ds: Dataset) -> Dataset:
    url = (f"http://127.0.0.1:{node.api.port}/dicomweb/studies/{ds.StudyInstanceUID}/series/"  # type: ignore[union-attr]
           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    reply = httpx.get(url, headers={"accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert reply.status_code == 200, reply.text
    _, params = media_type(reply.headers["content-type"])
    (part,) = split(reply.content, params["boundary"], 10)
    return pydicom.dcmread(io.BytesIO(part[1]))


def _series_complete(node: Node) -> bool:
    conn = node.index.reader()
    try:
        return [r[0] for r in conn.execute("SELECT state FROM series")] == ["complete"]
    finally:
        conn.close()


def test_other_nodes_read_from_the_bucket_and_write_results_to_it(start_node, tmp_path: Path, s3_server: ObjectPeer,
                                                                 postgres_dsn: str) -> None:
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    shared = {**spool_url(prefix), "database": postgres_dsn}
    # Node A receives and routes nothing (jobs.workers = 0); B and C start later with empty caches.
    a: Node = start_node(root=tmp_path / "a", storage=shared, objects=s3_server.section, jobs={"workers": 0})
    datasets = list(ct_datasets(SeriesSpec(slices=6, rows=64, columns=64, seed="spool-cluster")))
    assert send_all(a.scp.port, datasets) == [0] * 6
    assert wait_for(lambda: _series_complete(a), timeout=30)

    c: Node = start_node(root=tmp_path / "c", storage=shared, objects=s3_server.section, jobs={"workers": 0})
    assert spooled(c) == []
    # C's start-up scan (an empty cache, a shared index full of A's rows) deleted no object.
    keys = [f"{prefix}/spool/{c.spool.relpath_for(str(ds.SOPInstanceUID))}" for ds in datasets]
    assert all(s3_server.fetch(key, bucket=BUCKET) is not None for key in keys)
    served = _wado_instance(c, datasets[2])
    assert served.SOPInstanceUID == datasets[2].SOPInstanceUID
    assert served.PixelData == datasets[2].PixelData
    relpath = c.spool.relpath_for(str(datasets[2].SOPInstanceUID))
    assert spooled(c) == [c.spool.path_for(relpath)], "only the instance asked for is fetched into the cache"
    assert c.spool.path_for(relpath).read_bytes() == a.spool.path_for(relpath).read_bytes()

    receiver = Receiver().start()
    try:
        b: Node = start_node(root=tmp_path / "b", storage=shared, objects=s3_server.section,
                             routing={"rules": [CT_RULE]}, delivery=destination(receiver.port),
                             inference={"models_dir": engines()})
        assert wait_for(lambda: bool(jobs(b)) and all(j["state"] == "done" for j in jobs(b)), timeout=120), jobs(b)
        assert wait_for(lambda: len(receiver.received) >= 2, timeout=30)
        assert {str(ds.SOPClassUID) for ds in receiver.datasets()} == {SEG, SR}
    finally:
        receiver.stop()
    # B read every instance from the bucket into its own cache (it received none of them).
    assert len([p for p in spooled(b) if p.suffix == ".dcm"]) == 6
    conn = b.index.reader()
    try:
        results = [(r[0], r[1]) for r in conn.execute("SELECT kind, path FROM results")]
    finally:
        conn.close()
    assert sorted(kind for kind, _ in set(results)) == ["SEG", "SR"]
    for _kind, path in results:
        assert s3_server.fetch(f"{prefix}/{path}", bucket=BUCKET) == (b.spool.root / path).read_bytes()
    # The SR's findings are served by a node that did not write it, from the bucket.
    study = str(datasets[0].StudyInstanceUID)
    listed = httpx.get(f"http://127.0.0.1:{c.api.port}/v1/studies/{study}/results", timeout=30)  # type: ignore[union-attr]
    assert listed.status_code == 200, listed.text
    assert {r["kind"] for r in listed.json()["results"]} == {"SEG", "SR"}
    sr_path = next(path for kind, path in results if kind == "SR")
    assert (c.spool.root / sr_path).read_bytes() == (b.spool.root / sr_path).read_bytes()


def _placed(spool: Spool, sop_uid: str, data: bytes) -> str:
    """Put ``data`` into ``spool`` as a receive does (temp file, then place); returns its relpath."""
    fd, temp = spool.new_temp()
    os.write(fd, data)
    relpath = spool.relpath_for(sop_uid)
    spool.place(fd, temp, relpath, exists=False)
    return relpath


def test_spool_mirror_place_local_and_remove(tmp_path: Path, s3_server: ObjectPeer) -> None:
    stores = ObjectStores(s3_server.config)
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    mirror = ObjectSpool(stores, f"s3://{BUCKET}/{prefix}")
    first = Spool(tmp_path / "one", fsync=False, mirror=mirror)
    second = Spool(tmp_path / "two", fsync=False, mirror=mirror)
    relpath = _placed(first, "1.2.3.4", b"DICM" * 1000)
    assert s3_server.fetch(f"{prefix}/spool/{relpath}", bucket=BUCKET) == b"DICM" * 1000
    # Another node's cache fills on first read; a file nobody stored stays absent.
    assert not second.path_for(relpath).exists()
    assert second.local(relpath).read_bytes() == b"DICM" * 1000
    assert not second.local(second.relpath_for("9.9.9")).exists()
    with pytest.raises(StorageError, match="leaves the storage root"):
        second.local("../../outside.dcm")
    # Many at once (a job's series): fetched concurrently, returned in order, cached ones untouched.
    others = [_placed(first, f"1.2.3.{n}", f"instance {n}".encode()) for n in range(5, 15)]
    third = Spool(tmp_path / "three", fsync=False, mirror=mirror)
    third.local(others[3])
    got = third.local_many([others[0], *others, relpath])
    assert [p.read_bytes() for p in got] == [b"instance 5"] + [f"instance {n}".encode() for n in range(5, 15)] + [
        b"DICM" * 1000]
    assert got[1:-1] == [third.path_for(r) for r in others]
    # A result written under the root is published and fetched the same way.
    (first.root / "results" / "ab").mkdir(parents=True)
    (first.root / "results" / "ab" / "r.dcm").write_bytes(b"result")
    first.publish("results/ab/r.dcm")
    assert second.local("results/ab/r.dcm", result=True).read_bytes() == b"result"
    # Removal (an index commit that failed) removes the local file only: the same key may hold another
    # node's acknowledged copy of the instance, stored at the same moment.
    first.remove(relpath)
    assert not first.path_for(relpath).exists()
    assert s3_server.fetch(f"{prefix}/spool/{relpath}", bucket=BUCKET) == b"DICM" * 1000


def test_refused_mirror_leaves_the_spool_untouched(tmp_path: Path, s3_server: ObjectPeer) -> None:
    spool = Spool(tmp_path, fsync=False, mirror=ObjectSpool(ObjectStores(s3_server.wrong_config), "s3://inputs/x"))
    fd, temp = spool.new_temp()
    os.write(fd, b"data")
    with pytest.raises(StorageError, match="access denied"):
        spool.place(fd, temp, spool.relpath_for("1.2.3"), exists=False)
    assert temp.exists() and not spool.path_for(spool.relpath_for("1.2.3")).exists()
    spool.discard(fd, temp)  # what the ingestor does on StorageError
    assert not temp.exists()


def test_without_spool_url_local_is_the_plain_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    assert spool.mirror is None
    assert spool.local("ab/cd.dcm") == spool.path_for("ab/cd.dcm") == spool.files / "ab" / "cd.dcm"
    assert spool.local("results/ab/cd.dcm", result=True) == spool.root / "results" / "ab" / "cd.dcm"
    spool.publish("results/ab/cd.dcm")  # nothing to do, nothing raised


def test_azure_spool_url_keeps_a_bucket_invocations_results(start_node, azurite: ObjectPeer) -> None:
    """The same code on Azure Blob (Azurite): the facade's bucket invocation of a DICOM folder writes its SEG and
    SR to the spool's container as a series job does, beside the result folder the caller asked for."""
    from tests.test_compat_facade import ENGINES, dicom_series, invocation

    prefix = f"az-{uuid.uuid4().hex[:8]}"
    for n, data in enumerate(dicom_series(4, "spool-az"), start=1):
        azurite.seed(f"{prefix}-in/{n:04d}.dcm", data)
    node: Node = start_node(storage={"spool_url": f"az://results/{prefix}"}, objects=azurite.section,
                            inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                            facade={"azure_input_container": "inputs", "azure_output_container": "results"})
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/bucket_invocations_azure_uae", timeout=60,  # type: ignore[union-attr]
                       headers={"Input-Location": f"{prefix}-in"})
    assert reply.status_code == 200, reply.text
    rid = reply.json()["request_uuid"][0]
    assert wait_for(lambda: invocation(node, rid)["state"] in ("done", "failed"), 90)
    assert invocation(node, rid)["state"] == "done", invocation(node, rid)
    conn = node.index.reader()
    try:
        paths = {r[0]: r[1] for r in conn.execute("SELECT kind, path FROM results")}
    finally:
        conn.close()
    assert sorted(paths) == ["SEG", "SR"]
    for path in paths.values():
        assert azurite.fetch(f"{prefix}/{path}", bucket="results") == (node.spool.root / path).read_bytes()
