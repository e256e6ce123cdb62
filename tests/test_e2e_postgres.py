"""End to end on PostgreSQL (storage.database): C-STORE in, a job, SEG and SR delivered, every row in PostgreSQL.

The same path as ``test_e2e_results.py``'s first test, with the index on a throwaway PostgreSQL
database (tests/pg_peer.py) instead of the embedded SQLite file; the REST facade reads the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import RecordingSCP as Receiver
from tests.scu import send_all
from tests.test_e2e_results import CT_RULE, destination, engines, jobs

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def test_series_to_seg_and_sr_on_postgresql(start_node, tmp_path: Path, postgres_dsn: str) -> None:
    receiver = Receiver().start()
    try:
        node: Node = start_node(storage={"database": postgres_dsn}, routing={"rules": [CT_RULE]},
                                delivery=destination(receiver.port), inference={"models_dir": engines()})
        datasets = list(ct_datasets(SeriesSpec(slices=6, rows=64, columns=64, seed="e2e-pg")))
        assert send_all(node.scp.port, datasets) == [0] * 6
        assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=90), jobs(node)
        assert wait_for(lambda: len(receiver.received) == 2, timeout=30)
        assert {str(ds.SOPClassUID) for ds in receiver.datasets()} == {SEG, SR}
    finally:
        receiver.stop()
    assert not (tmp_path / "node" / "index.sqlite3").exists(), "no SQLite index next to PostgreSQL"
    assert node.index.counts()["instances"] == 6
    job = jobs(node)[0]
    assert set(json.loads(job["stage_times"])) == {"validate", "decode", "infer", "write"}
    conn = node.index.reader()
    try:
        kinds = sorted(r[0] for r in conn.execute("SELECT kind FROM results"))
        ledger = sorted((r["destination"], r["state"]) for r in conn.execute("SELECT * FROM deliveries"))
        work = {(r["kind"], r["state"]) for r in conn.execute("SELECT kind, state FROM work")}
    finally:
        conn.close()
    assert kinds == ["SEG", "SR"]
    assert ledger == [("pacs", "sent"), ("pacs", "sent")]
    assert work == {("job", "done"), ("delivery", "done")}
    api = f"http://127.0.0.1:{node.api.port}" if node.api is not None else None
    if api is not None:
        listed = httpx.get(f"{api}/v1/jobs", params={"study": str(datasets[0].StudyInstanceUID)}, timeout=10)
        assert listed.status_code == 200, listed.text


def test_more_associations_than_the_reader_pool_all_store(start_node, postgres_dsn: str) -> None:
    """Each C-STORE's duplicate lookup gives its pooled reader back: 24 associations in turn (the pool holds 16)
    all store at once. Before, every association thread kept one reader for good, and from the 17th on each
    C-STORE waited 30 s for a connection and failed 0xA700."""
    node: Node = start_node(storage={"database": postgres_dsn}, jobs={"workers": 0})
    datasets = list(ct_datasets(SeriesSpec(slices=24, rows=16, columns=16, seed="pool")))
    for ds in datasets:  # one association per instance, one after the other (each on a new thread)
        assert send_all(node.scp.port, [ds]) == [0]
    assert node.index.counts()["instances"] == 24
