"""Three ``dicom-node serve`` processes on one PostgreSQL database and one shared storage root (issue 18).

What a TCP load balancer in front of several nodes does to one study: its instances arrive at every
node on associations in flight at once. Assembly must still decide each completion once for the
cluster (dicom_node.index.ops.complete_due), so there is one job per model per series and each result
is delivered once. And when the node running a job is killed (-9), another node takes the job once
its lease (``jobs.lease``) runs out and finishes it: nothing acknowledged is lost, nothing is done or
delivered twice.

Real parts: the nodes are subprocesses (tests/cluster.py), PostgreSQL 15 is the throwaway cluster of
tests/pg_peer.py, the senders are DCMTK ``storescu`` (round robin) and pynetdicom, the destination is
a pynetdicom SCP (tests/receiver.py). Missing peers skip with the reason, and fail under
``DICOM_NODE_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.cluster import Cluster, ClusterNode
from tests.conftest import require_tool, wait_for
from tests.receiver import RecordingSCP
from tests.scu import associate, send_all
from tests.test_e2e_results import engines

#: Job states in which the job is claimed and still producing its results (nothing delivered yet).
PRODUCING = ("validating", "decoding", "inferring", "writing")
#: Repetitions of the kill -9 of the node running a job (issue 18).
KILL_ROUNDS = int(os.environ.get("DICOM_NODE_CLUSTER_KILL_ROUNDS", "20"))


def _config(base: Path, receiver_port: int) -> None:
    """``conf/node.toml`` of every node: CT series -> ct-body -> the recording SCP."""
    (base / "conf").mkdir(parents=True, exist_ok=True)
    (base / "conf" / "node.toml").write_text(
        f'[inference]\nmodels_dir = "{engines()}"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["pacs"]\n'
        '[routing.rules.match]\nmodality = "CT"\n'
        '[[delivery.destinations]]\nkind = "dimse"\nname = "pacs"\nae_title = "RESULTS_SCP"\nhost = "127.0.0.1"\n'
        f'port = {receiver_port}\n'
    )


def _env(quiet: float, lease: float) -> dict[str, str]:
    return {"DICOM_NODE__ASSEMBLY__QUIET_PERIOD": str(quiet), "DICOM_NODE__ASSEMBLY__ABORT_GRACE": "30",
            "DICOM_NODE__ASSEMBLY__POLL_INTERVAL": "0.1", "DICOM_NODE__JOBS__POLL_INTERVAL": "0.1",
            "DICOM_NODE__JOBS__LEASE": str(lease), "DICOM_NODE__LOGGING__LEVEL": "WARNING"}


def _study(base: Path, series: int, slices: int) -> tuple[list[Path], set[str], set[str]]:
    """One study of ``series`` CT series as Part 10 files (one StudyInstanceUID, as a modality sends it).

    Returns the files, their series UIDs and their SOP Instance UIDs.
    """
    out = base / "study"
    out.mkdir()
    study_uid = None
    files: list[Path] = []
    series_uids: set[str] = set()
    sops: set[str] = set()
    for s in range(series):
        for i, ds in enumerate(ct_datasets(SeriesSpec(slices=slices, rows=64, columns=64, seed=f"rr-{s}"))):
            study_uid = study_uid or ds.StudyInstanceUID
            ds.StudyInstanceUID = study_uid
            path = out / f"{s:02d}-{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            series_uids.add(str(ds.SeriesInstanceUID))
            sops.add(str(ds.SOPInstanceUID))
    return files, series_uids, sops


def test_one_study_sent_round_robin_to_three_nodes_completes_once(tmp_path: Path, postgres_dsn: str) -> None:
    storescu = require_tool("storescu", "apt-get install dcmtk")
    receiver = RecordingSCP().start()
    _config(tmp_path, receiver.port)
    cluster = Cluster(tmp_path, postgres_dsn, 3, _env(quiet=3.0, lease=30.0))
    files, series, sent = _study(tmp_path, series=3, slices=12)
    try:
        cluster.start()
        # File k goes to node k % 3; each node gets two storescu associations at once: six in flight.
        batches = [(node, files[i::6]) for i, node in enumerate(cluster.nodes * 2)]
        senders = [subprocess.Popen([storescu, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port),
                                     *map(str, batch)], env={**os.environ, "TCP_NODELAY": "1"},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for node, batch in batches]
        for sender, (node, _batch) in zip(senders, batches, strict=True):
            out, _ = sender.communicate(timeout=120)
            assert sender.returncode == 0, f"{out.decode(errors='replace')}\n{node.name}:\n{node.tail()}"
        jobs = lambda: cluster.query("SELECT series_instance_uid, model, state FROM jobs")  # noqa: E731
        # At least the three jobs, all ended (a duplicate completion shows as a fourth job, asserted below).
        assert wait_for(lambda: len(jobs()) >= 3 and all(j[2] == "done" for j in jobs()), timeout=180), jobs()
        assert wait_for(lambda: len(receiver.uids()) >= 6, timeout=60), receiver.uids()
        done = jobs()
        events = Counter(cluster.query("SELECT kind, series_instance_uid FROM events"))
        indexed = {r[0] for r in cluster.query("SELECT sop_instance_uid FROM instances")}
        associations = cluster.query("SELECT node_id, state, instances FROM associations")
    finally:
        cluster.stop()
        receiver.stop()
    assert events == Counter({**{("series_complete", s): 1 for s in series}, ("study_complete", None): 1}), events
    assert sorted((s, m) for s, m, _state in done) == sorted((s, "ct-body") for s in series), "one job per model per series"
    uids = receiver.uids()
    assert len(uids) == 6 and len(set(uids)) == 6, f"each SEG and SR delivered once: {uids}"
    assert indexed == sent, "every acknowledged instance is indexed"
    # Six associations, each recorded with the node that accepted it, spread over the three nodes.
    assert len(associations) == 6 and all(a[1] == "released" for a in associations)
    assert len({a[0] for a in associations}) == 3 and all(a[0] for a in associations)


def _states(cluster: Cluster, series: str) -> list[str]:
    """The states of the jobs of one series."""
    return [r[0] for r in cluster.query("SELECT state FROM jobs WHERE series_instance_uid = ?", (series,))]


def _pin_to(cluster: Cluster, victim: ClusterNode) -> list[ClusterNode]:
    """Pause every node but ``victim``, none of them inside a transaction; returns the paused nodes.

    Which node claims a job is a race between the nodes' queues; with the others paused (SIGSTOP)
    the victim is the only one that can receive, complete, route and claim, so the kill hits the
    node running the job.
    """
    others = [n for n in cluster.nodes if n is not victim]
    for _ in range(50):
        for node in others:
            node.pause()
        time.sleep(0.4)
        if not cluster.paused_holding_locks():
            return others
        for node in others:
            node.resume()
        time.sleep(0.2)
    pytest.fail("could not pause the other nodes outside a transaction")


def test_kill9_of_the_node_running_a_job_another_node_finishes_it(tmp_path: Path, postgres_dsn: str) -> None:
    receiver = RecordingSCP().start()
    _config(tmp_path, receiver.port)
    # A short job lease, so that another node takes the killed node's job within seconds.
    cluster = Cluster(tmp_path, postgres_dsn, 3, _env(quiet=0.5, lease=4.0))
    acked: list[str] = []
    killed_in: list[str] = []
    try:
        cluster.start()
        for r in range(KILL_ROUNDS):
            victim = cluster.nodes[r % len(cluster.nodes)]
            paused = _pin_to(cluster, victim)
            datasets = list(ct_datasets(SeriesSpec(slices=24, rows=256, columns=256, seed=f"k9-cluster-{r}")))
            assert victim.proc is not None and victim.proc.poll() is None, f"round {r}: {victim.name} died:\n{victim.tail()}"
            assert send_all(victim.port, datasets) == [0] * len(datasets), f"round {r}: a C-STORE failed"
            acked += [str(ds.SOPInstanceUID) for ds in datasets]
            series = str(datasets[0].SeriesInstanceUID)
            assert wait_for(lambda s=series: _states(cluster, s) not in ([], ["queued"]), timeout=60,
                            interval=0.01), _states(cluster, series)
            seen = _states(cluster, series)
            victim.kill()
            killed_in += seen
            for node in paused:
                node.resume()
            assert seen[0] in PRODUCING, f"round {r}: the kill should land while the job runs, not in {seen}"
            assert wait_for(lambda s=series: _states(cluster, s) == ["done"], timeout=120), \
                f"round {r}: {_states(cluster, series)}"
            victim.spawn()  # the killed node comes back (a new node id) for the next rounds
            try:
                victim.wait_ready()
            except (OSError, TimeoutError, AssertionError) as exc:
                pytest.fail(f"round {r}: {victim.name} did not come back ({exc}):\n{victim.tail()}")
        assert wait_for(lambda: len(receiver.uids()) >= 2 * KILL_ROUNDS, timeout=60), len(receiver.uids())
        work = cluster.query("SELECT state, attempts FROM work WHERE kind = 'job'")
        kinds = Counter(r[0] for r in cluster.query("SELECT kind FROM results"))
        jobs = cluster.query("SELECT state FROM jobs")
        indexed = {r[0] for r in cluster.query("SELECT sop_instance_uid FROM instances")}
        events = Counter(r[0] for r in cluster.query("SELECT kind FROM events"))
    finally:
        cluster.stop()
        receiver.stop()
    assert set(acked) <= indexed, f"{len(set(acked) - indexed)} acknowledged instances lost"
    assert jobs == [("done",)] * KILL_ROUNDS and events == {"series_complete": KILL_ROUNDS,
                                                          "study_complete": KILL_ROUNDS}
    # Every job was claimed by the killed node and once more by another: two attempts, never three.
    assert work == [("done", 2)] * KILL_ROUNDS, work
    assert kinds == {"SEG": KILL_ROUNDS, "SR": KILL_ROUNDS}, "a re-run replaces its results"
    uids = receiver.uids()
    assert len(uids) == 2 * KILL_ROUNDS and len(set(uids)) == len(uids), "each result delivered exactly once"
    assert set(killed_in) <= set(PRODUCING)


def test_a_node_killed_mid_send_stops_holding_its_series_once_its_heartbeat_runs_out(
        tmp_path: Path, postgres_dsn: str) -> None:
    """Before node ids, a starting node aborted every open association, live nodes' too, and a node
    that died and never came back held its series open for ever. Now: only the dead node's."""
    env = {**_env(quiet=0.5, lease=30.0), "DICOM_NODE__ASSEMBLY__ABORT_GRACE": "1.0",
           "DICOM_NODE__ASSEMBLY__NODE_LEASE": "1.5", "DICOM_NODE__JOBS__WORKERS": "0"}
    cluster = Cluster(tmp_path, postgres_dsn, 2, env)
    dying, living = (list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed=s))) for s in ("dies", "lives"))
    try:
        cluster.start()
        victim, survivor = cluster.nodes
        held = [associate(victim.port), associate(survivor.port)]
        assert all(a.is_established for a in held)
        for assoc, datasets in zip(held, (dying, living), strict=True):
            assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0, 0, 0]
        victim.kill()  # its association stays 'active' in the database: nobody will end it
        held[0].abort()
        completed = lambda: {r[0] for r in cluster.query(  # noqa: E731
            "SELECT series_instance_uid FROM events WHERE kind = 'series_complete'")}
        dead_series, live_series = str(dying[0].SeriesInstanceUID), str(living[0].SeriesInstanceUID)
        # The survivor's heartbeat poll counts the victim dead after 1.5 s, then abort_grace (1 s) passes.
        assert wait_for(lambda: dead_series in completed(), timeout=60), f"{completed()}\n{survivor.tail()}"
        states = dict(cluster.query("SELECT node_id IS NULL, state FROM associations ORDER BY started_at"))
        assert live_series not in completed(), "the live node's open association still holds its series"
        assert sorted(r[0] for r in cluster.query("SELECT state FROM associations")) == ["aborted", "active"], states
        held[1].release()
        assert wait_for(lambda: live_series in completed(), timeout=30)
        events = Counter(cluster.query("SELECT kind, series_instance_uid FROM events WHERE kind = 'series_complete'"))
    finally:
        cluster.stop()
    assert events == Counter({("series_complete", dead_series): 1, ("series_complete", live_series): 1})
