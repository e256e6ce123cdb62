"""kill -9 of a ``dicom-node serve`` subprocess during sends and during jobs, and a destination that goes away.

These extend the cases of ``tests/test_durability.py`` and
``tests/test_e2e_results.py`` (same ``ServeProcess`` node, same pynetdicom
sender, same recording receiver) with what they did not check: repeated kills,
no spool file without an index row after each restart, results recorded and
delivered exactly once after a kill inside the job, and a destination that was
up, went down and came back.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import ServeProcess, free_port, node_index, shared_spool, wait_for
from tests.receiver import RecordingSCP
from tests.scu import associate, send_all
from tests.test_e2e_results import CT_RULE, destination, engines, jobs

FAST = {"DICOM_NODE__ASSEMBLY__QUIET_PERIOD": "0.3", "DICOM_NODE__ASSEMBLY__ABORT_GRACE": "1.0",
        "DICOM_NODE__ASSEMBLY__POLL_INTERVAL": "0.1", "DICOM_NODE__LOGGING__LEVEL": "WARNING"}


def _index(root: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` read off the node's index, on the backend the tests run (SQLite or PostgreSQL)."""
    with node_index(root) as index:
        conn = index.reader()
        try:
            return [tuple(r) for r in conn.execute(sql)]
        finally:
            conn.close()


def _unreferenced(root: Path) -> list[Path]:
    referenced = {r[0] for r in _index(root, "SELECT path FROM instances")}
    return [p for p in (root / "spool").glob("*/*") if f"{p.parent.name}/{p.name}" not in referenced]


def _send_until_killed(serve: ServeProcess, seed: str, kill_after: int) -> list[str]:
    """Send a series on one association; kill -9 the node after ``kill_after`` acks; return the acked UIDs."""
    datasets = list(ct_datasets(SeriesSpec(slices=kill_after * 3, rows=64, columns=64, seed=seed)))
    acked: list[str] = []

    def sender() -> None:
        assoc = associate(serve.port)
        try:
            for ds in datasets:
                rsp = assoc.send_c_store(ds)
                if "Status" in rsp and rsp.Status == 0:
                    acked.append(ds.SOPInstanceUID)
                if not assoc.is_established:
                    break
        except (OSError, RuntimeError, ValueError):
            pass  # the node died under it: what was acknowledged is what counts

    thread = threading.Thread(target=sender)
    thread.start()
    assert wait_for(lambda: len(acked) >= kill_after, timeout=60), "sender made no progress"
    serve.stop(signal.SIGKILL)
    thread.join(30)
    assert len(acked) < len(datasets), "the kill should land mid-series"
    return list(acked)


def test_repeated_kill9_during_sends_keeps_every_ack_and_leaves_no_orphan(tmp_path: Path) -> None:
    root = tmp_path / "node"
    port = free_port()
    acked: list[str] = []
    serve = ServeProcess(root, port, FAST).start()
    for round_ in range(3):
        acked += _send_until_killed(serve, f"kill-loop-{round_}", kill_after=20)
        serve = ServeProcess(root, port, FAST).start()  # the start-up scan runs before the SCP listens
        stored = {r[0] for r in _index(root, "SELECT sop_instance_uid FROM instances")}
        assert set(acked) <= stored, f"round {round_}: acknowledged instances lost"
        if shared_spool():
            # On PostgreSQL the spool may be shared with other nodes: a starting node spares files of the
            # last hour (another node may be between its rename and its commit). The sender waits for each
            # answer, so each kill leaves at most the one instance in flight.
            assert len(_unreferenced(root)) <= round_ + 1, f"round {round_}: {_unreferenced(root)}"
            assert len(list((root / "tmp").glob("*.part"))) <= round_ + 1
        else:
            assert _unreferenced(root) == [], f"round {round_}: spool files without an index row after restart"
            assert not list((root / "tmp").glob("*.part"))
    try:
        # The node still takes a full series after three crashes.
        assert send_all(port, list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="after")))) == [0] * 3
    finally:
        serve.stop()


def test_kill9_inside_a_running_job_records_and_delivers_its_results_once(tmp_path: Path) -> None:
    """The kill lands once the job is claimed (running or later); after restart: 2 result rows, 2 UIDs once each."""
    receiver = RecordingSCP().start()
    root = tmp_path / "node"
    root.mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "node.toml").write_text(
        f'[inference]\nmodels_dir = "{engines()}"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["pacs"]\n'
        '[routing.rules.match]\nmodality = "CT"\n'
        f'[[delivery.destinations]]\nkind = "dimse"\nname = "pacs"\nae_title = "RESULTS_SCP"\nhost = "127.0.0.1"\n'
        f'port = {receiver.port}\n'
    )
    port = free_port()
    serve = ServeProcess(root, port, FAST).start()
    try:
        assert send_all(port, list(ct_datasets(SeriesSpec(slices=24, rows=256, columns=256, seed="k9-job")))) == [0] * 24
        states = lambda: [r[0] for r in _index(root, "SELECT state FROM jobs")]  # noqa: E731
        assert wait_for(lambda: bool(states()) and states()[0] != "queued", timeout=60, interval=0.01), states()
        serve.stop(signal.SIGKILL)
        serve = ServeProcess(root, port, FAST).start()
        assert wait_for(lambda: states() == ["done"], timeout=120), states()
        kinds = sorted(r[0] for r in _index(root, "SELECT kind FROM results"))
        assert kinds == ["SEG", "SR"], "a re-run replaces its results, it does not add a second set"
        uids = receiver.uids()
        assert len(uids) == 2 and len(set(uids)) == 2, f"each result exactly once: {uids}"
    finally:
        serve.stop()
        receiver.stop()


def test_destination_up_then_down_then_up_receives_every_result_exactly_once(start_node) -> None:
    port = free_port()
    first = RecordingSCP().start(port)
    node: Node = start_node(routing={"rules": [CT_RULE]}, delivery=destination(port),
                            inference={"models_dir": engines()})
    assert send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="up")))) == [0, 0]
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=60), jobs(node)
    first.stop()  # down for a while: the next series' results wait in the ledger

    assert send_all(node.scp.port, list(ct_datasets(SeriesSpec(slices=2, rows=32, columns=32, seed="down")))) == [0, 0]
    assert wait_for(lambda: sorted(j["state"] for j in jobs(node)) == ["delivering", "done"], timeout=60), jobs(node)
    conn = node.index.reader()
    try:
        assert wait_for(lambda: conn.execute("SELECT COUNT(*) FROM deliveries WHERE attempts > 0 AND state != 'sent'")
                        .fetchone()[0] > 0, timeout=30), "no failed attempt was recorded while the destination was down"
    finally:
        conn.close()
    second = RecordingSCP().start(port)
    try:
        assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done", "done"], timeout=60), jobs(node)
        uids = first.uids() + second.uids()
        assert len(uids) == 4 and len(set(uids)) == 4, f"every result exactly once: {uids}"
        assert len(first.uids()) == 2 and len(second.uids()) == 2
    finally:
        second.stop()
