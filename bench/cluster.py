"""Cluster benchmark (issue 18): 1, 2 and 3 ``dicom-node serve`` processes on one PostgreSQL, beside the embedded default.

Same run, side by side, each configuration on an empty database and storage root:

- anchor: one node on the embedded default (SQLite index and a local spool under its own root);
- ``postgresql x N`` for N in ``--nodes``: N node processes sharing one PostgreSQL 15 database (a
  throwaway cluster started as the tests start it, tests/peers/postgres.py, with ``fsync=on`` so a commit
  costs what it costs on this disk) and one spool folder (``storage.root``, a shared filesystem path).

Every node routes CT to the bundled ``ct-body`` model (ONNX Runtime on CPU) and delivers SEG and SR by
C-STORE to one pynetdicom Storage SCP in this process. Each phase sends ``--series`` synthetic CT series
(fresh UIDs each, ``--slices`` slices of ``--size``\\ :sup:`2`) from ``--senders`` concurrent DCMTK
``storescu`` streams (TCP_NODELAY=1), stream ``i`` to node ``i mod N`` (as a TCP load balancer spreads
associations), ``--series-per-association`` series per association (default: all of a stream's series on
one association, as a PACS forwarding its queue; see bench/README.md for why not one per series).
Phase 1 sends as calling AE ``INGEST``, which no rule routes: ingest alone. Phase 2 sends new series as
``JOBS``: ct-body runs on each. Measured per configuration (medians of ``--repeats``):

- ingest instances/s (phase 1) and instances/s while jobs run (phase 2): instances over the wall time
  from the first association to the last release;
- jobs/s: jobs done over the time from the first phase-2 series completion (``series.completed_at``) to
  the last result delivered (both SEG and SR of a series at the receiver);
- p95 seconds from the release of the association that carried a series (the earliest the node may
  complete it) to its result delivered; the quiet period (``--quiet-period``) is part of it;
- per stage: writing commits (the increase of PostgreSQL's next transaction id: only a writing transaction
  takes one and waits for its WAL flush) per instance in phase 1, per job in phase 2 (phase 2's commits less
  its instances' share) and per second with idle nodes; files written under the storage root per instance
  and per job; inference seconds per job (``jobs.stage_times``); CPU of each node process, of PostgreSQL,
  of this process (senders and receiver) and of the whole machine (``/proc/stat``);
- duplicates: series completion events, jobs and result deliveries beyond one per series (a series
  completed twice is a job run twice).

In the same run it measures what the shared parts can take: ``pgbench`` committing one-row inserts with
1 and 8 clients on the same cluster, and fsync'd file creations per second in the spool's folder (write,
fsync, rename, directory fsync, as the spool does). From these it prints the saturation arithmetic for 10
and 100 nodes. Nothing is asserted; read the numbers.

Usage: ``.venv/bin/python bench/cluster.py [--nodes 1 2 3] [--series 40] [--slices 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_probe import (  # noqa: E402
    create_database,
    fsync_writes_per_s,
    machine_busy,
    next_xid,
    pg_cpu_seconds,
    pgbench_tps,
    s3_puts_per_s,
)
from bench.cluster_report import Config, Run, report  # noqa: E402
from bench.common import ROOT, checkout_env, cpu_seconds, free_port, percentile, wait_port  # noqa: E402
from dicom_node.index import Index  # noqa: E402
from dicom_node.synthetic import SeriesSpec, write_ct_series  # noqa: E402
from tests.peers.moto_s3 import MotoS3, MotoUnavailable, moto_s3  # noqa: E402
from tests.peers.postgres import PgCluster, PostgresUnavailable, postgres_cluster  # noqa: E402

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
INGEST_AET, JOBS_AET = "INGEST", "JOBS"
SPOOL_BUCKET = "inputs"


@dataclass(frozen=True)
class Series:
    """One generated series: its study (the results carry the same Study Instance UID) and files."""

    study: str
    series: str
    files: list[Path]


class Receiver:
    """A Storage SCP (pynetdicom) that notes when each result arrives, by study and SOP instance."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.port = free_port()
        self.arrivals: list[tuple[str, str, str, float]] = []  # study, SOP class, SOP instance, time
        self._lock = threading.Lock()
        ae = AE(ae_title="RESULTS")
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            with self._lock:
                self.arrivals.append((str(ds.StudyInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                      time.time()))
            return 0

        server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        if server is None:  # only a blocking start returns None
            raise RuntimeError("the result receiver did not start")
        self.server = server

    def delivered(self) -> dict[str, float]:
        """Study UID -> when both its SEG and its SR had arrived (the later of the first of each)."""
        first: dict[tuple[str, str], float] = {}
        with self._lock:
            for study, sop_class, _sop, t in self.arrivals:
                first.setdefault((study, sop_class), t)
        return {study: max(t, first[(study, SR)]) for (study, cls), t in first.items() if cls == SEG and (study, SR) in first}

    def duplicates(self) -> int:
        """Result instances received more than once (the same SOP Instance UID again)."""
        with self._lock:
            counts = Counter(sop for _s, _c, sop, _t in self.arrivals)
        return sum(n - 1 for n in counts.values() if n > 1)

    def reset(self) -> None:
        with self._lock:
            self.arrivals.clear()


def make_series(work: Path, tag: str, count: int, slices: int, size: int) -> list[Series]:
    """``count`` CT series with distinct UIDs (seeded by ``tag``, so cached on disk between runs)."""
    out = []
    for i in range(count):
        folder = work / "series" / f"{tag}-{slices}x{size}" / f"{i:04d}"
        if len(list(folder.glob("*.dcm"))) != slices:
            shutil.rmtree(folder, ignore_errors=True)
            write_ct_series(folder, SeriesSpec(slices=slices, rows=size, columns=size,
                                               seed=f"cluster-{tag}-{slices}-{size}-{i}"))
        files = sorted(folder.glob("*.dcm"))
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        out.append(Series(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), files))
    return out


def node_config(work: Path, name: str, root: Path, database: str | None, dest: int, quiet: float,
                store: str = "") -> tuple[Path, int, int]:
    """One node's config file: its ports, root and database, ct-body on CT, one destination; ``store`` ends [storage]."""
    scp, api = free_port(), free_port()
    db = f'database = "{database}"\n' if database else ""
    db += store
    conf = work / f"{name}.toml"
    conf.write_text(
        f'[scp]\nport = {scp}\n[api]\nport = {api}\n'
        f'[storage]\nroot = "{root}"\nmin_free_bytes = 0\n{db}'
        f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n'
        f'[assembly]\nquiet_period = {quiet}\npoll_interval = 0.1\n[jobs]\npoll_interval = 0.1\n'
        '[logging]\nlevel = "WARNING"\n'
        # Only series sent as JOBS run the model: the ingest phase (calling AE INGEST) completes series, runs nothing.
        f'[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["dest"]\n[routing.rules.match]\n'
        f'modality = "CT"\ncalling_ae = "{JOBS_AET}"\n'
        f'[[delivery.destinations]]\nkind = "dimse"\nname = "dest"\nae_title = "RESULTS"\nhost = "127.0.0.1"\nport = {dest}\n',
        encoding="utf-8")
    return conf, scp, api


@dataclass
class Node:
    """A running ``dicom-node serve`` child process."""

    proc: subprocess.Popen[bytes]
    scp: int
    api: int
    log: Path


def s3_spool(moto: MotoS3, prefix: str) -> str:
    """The TOML that puts the spool's shared copy under ``s3://inputs/<prefix>`` (storage.spool_url) on moto."""
    return (f'spool_url = "s3://{SPOOL_BUCKET}/{prefix}"\n[objects.s3]\nendpoint = "{moto.endpoint}"\nregion = "us-east-1"\n'
            f'access_key_id = "{moto.access_key_id}"\nsecret_access_key = "{moto.secret_access_key}"\nallow_http = true\n'
            f'allowed_buckets = ["{SPOOL_BUCKET}"]\n')


@contextmanager
def start_nodes(work: Path, count: int, database: str | None, dest: int, quiet: float,
                store: str = "") -> Iterator[list[Node]]:
    """``count`` nodes on one database, all ready (``/readyz``, DICOM port open) before yielding.

    Without ``store`` they share one root (``shared-root``: the spool on a shared filesystem path); with
    an object-store spool (``store``, :func:`s3_spool`) each has its own root, its local cache.
    """
    nodes: list[Node] = []
    for i in range(count):
        shutil.rmtree(work / (f"root{i}" if store else "shared-root"), ignore_errors=True)
    http = requests.Session()
    http.trust_env = False

    def launch(i: int) -> Node:
        root = work / (f"root{i}" if store else "shared-root")
        root.mkdir(parents=True, exist_ok=True)
        conf, scp, api = node_config(work, f"node{i}", root, database, dest, quiet, store)
        log = work / f"node{i}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(conf)], cwd=work,
                                    stdout=out, stderr=out, env=checkout_env())
        return Node(proc, scp, api, log)

    def ready(node: Node) -> None:
        deadline = time.monotonic() + 120
        while True:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a node did not start; see {node.log}: {node.log.read_text()[-1500:]}")
            try:
                if http.get(f"http://127.0.0.1:{node.api}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        wait_port(node.scp)

    try:
        # All at once, as an orchestrator starts replicas (before 4fbb155 two nodes starting together on one
        # root could read <root>/webhook.key empty; bench/README.md, "Cluster").
        nodes += [launch(i) for i in range(count)]
        for node in nodes:
            ready(node)
        yield nodes
    finally:
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


def send(series: list[Series], ports: list[int], senders: int, per_association: int,
         calling_ae: str) -> tuple[float, float, dict[str, float]]:
    """Send every series from ``senders`` concurrent storescu streams; sender ``i`` talks to ``ports[i % N]``.

    Sender ``i`` takes series ``i, i + senders, ...`` and sends them ``per_association`` series per
    association (0: all of its series on one association, as a PACS forwarding a queue does). Returns the
    start time, the wall seconds and, per study, when the association that carried it was released
    (its storescu returned: every instance acknowledged), the earliest the node may complete the series.
    """
    done: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    env = checkout_env(TCP_NODELAY="1")

    def sender(i: int) -> None:
        mine = series[i::senders]
        size = per_association or len(mine) or 1  # a sender with no series sends nothing
        for first in range(0, len(mine), size):
            group = mine[first:first + size]
            run = subprocess.run(["storescu", "-aet", calling_ae, "-aec", "DICOM_NODE", "--max-pdu", "131072", "127.0.0.1",
                                  str(ports[i % len(ports)]), *(str(f) for s in group for f in s.files)],
                                 env=env, capture_output=True, check=False)
            with lock:
                if run.returncode != 0:
                    errors.append((run.stdout + run.stderr).decode(errors="replace")[-800:])
                    return
                done.update((s.study, time.time()) for s in group)

    start, t0 = time.time(), time.perf_counter()
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"storescu failed: {errors[0]}")
    return start, time.perf_counter() - t0, done


@dataclass
class Facts:
    """What the index says after a run."""

    job_states: Counter[str]
    done_series: int  # distinct series with a job done (a series run twice counts once)
    jobs_per_series: Counter[str]
    events_per_series: Counter[str]
    infer_s: list[float]
    first_completed: float


def read_index(index: Index) -> Facts:
    """Jobs, series completion events and the first completion of a job series, through the index layer (either backend)."""
    conn = index.reader()
    try:
        jobs = conn.execute("SELECT series_instance_uid, state, stage_times FROM jobs").fetchall()
        events = conn.execute("SELECT series_instance_uid FROM events WHERE kind = 'series_complete'").fetchall()
        first = conn.execute("SELECT MIN(completed_at) FROM series WHERE calling_ae = ?", (JOBS_AET,)).fetchone()[0]
    finally:
        conn.close()
    infer = [float(json.loads(stages).get("infer", 0.0)) for _s, state, stages in jobs if state == "done"]
    return Facts(Counter(str(r[1]) for r in jobs), len({str(r[0]) for r in jobs if r[1] == "done"}),
                 Counter(str(r[0]) for r in jobs), Counter(str(r[0]) for r in events), infer, float(first or 0.0))


def wait_complete(index: Index, expected: int, timeout: float) -> None:
    """Block until ``expected`` series are complete (quiet period passed, associations released)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = index.reader()
        try:
            done = conn.execute("SELECT COUNT(*) FROM series WHERE state = 'complete'").fetchone()[0]
        finally:
            conn.close()
        if done >= expected:
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {done} of {expected} series completed in {timeout:.0f} s")


def wait_delivered(receiver: Receiver, expected: int, nodes: list[Node], timeout: float) -> dict[str, float]:
    """Block until every series' SEG and SR arrived, a node died, or ``timeout`` passed without progress."""
    last_count, last_progress = -1, time.monotonic()
    while True:
        got = receiver.delivered()
        if len(got) >= expected or any(n.proc.poll() is not None for n in nodes):
            return got
        if len(got) != last_count:
            last_count, last_progress = len(got), time.monotonic()
        elif time.monotonic() - last_progress > timeout:
            return got  # a failed job never delivers: the run reports it as undelivered
        time.sleep(0.02)


def files_under(root: Path) -> int:
    """Files the nodes wrote under the storage root (spool, results), the SQLite index excluded."""
    return sum(1 for f in root.rglob("*") if f.is_file() and not f.name.startswith("index.sqlite3"))


class Meter:
    """CPU of the nodes, the machine, this process (senders and receiver; storescu children once reaped) and PostgreSQL."""

    def __init__(self, pids: list[int], cluster: PgCluster | None) -> None:
        self.pids, self.cluster = pids, cluster
        self.t0, self.start = time.perf_counter(), self._sample()

    def _sample(self) -> tuple[list[float], tuple[int, int], float, float]:
        return ([cpu_seconds(p) for p in self.pids], machine_busy(), cpu_seconds(os.getpid()),
                pg_cpu_seconds(self.cluster) if self.cluster else float("nan"))

    def cores(self) -> tuple[list[float], float, float, float]:
        """Per node, machine, this process, PostgreSQL: cores used since the meter started."""
        nodes, busy, load, pg = self._sample()
        wall = time.perf_counter() - self.t0
        n0, b0, l0, p0 = self.start
        ticks = max(busy[1] - b0[1], 1)
        return ([(b - a) / wall for a, b in zip(n0, nodes, strict=True)], (busy[0] - b0[0]) / ticks * (os.cpu_count() or 1),
                (load - l0) / wall, (pg - p0) / wall)


def measure(name: str, count: int, cluster: PgCluster | None, moto: MotoS3 | None, ingest: list[Series],
            jobs: list[Series], receiver: Receiver, args: argparse.Namespace) -> Run:
    """Start ``count`` nodes (on PostgreSQL when ``cluster`` is given, the spool's shared copy on moto S3 when
    ``moto`` is); phase 1 ingest only, phase 2 with jobs."""
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    database = create_database(cluster, f"bench_{name}") if cluster else None
    xid = (lambda: next_xid(database)) if database else (lambda: 0)  # noqa: E731
    root = work / "shared-root"
    if moto is not None:  # the writes that count are the objects put, not the nodes' local caches
        def written() -> int:
            pages = moto.client.get_paginator("list_objects_v2").paginate(Bucket=SPOOL_BUCKET, Prefix=f"{name}/")
            return sum(page.get("KeyCount", 0) for page in pages)
    else:
        def written() -> int:
            return files_under(root)
    receiver.reset()
    with start_nodes(work, count, database, receiver.port, args.quiet_period, s3_spool(moto, name) if moto else "") as nodes:
        index = Index(database or root / "index.sqlite3")
        try:
            x = xid()
            time.sleep(args.idle)  # what idle nodes commit: the pollers' cost per node
            idle = (xid() - x) / args.idle
            # Phase 1: ingest only (calling AE INGEST matches no rule), until every series is complete.
            n1 = sum(len(s.files) for s in ingest)
            x0, meter = xid(), Meter([n.proc.pid for n in nodes], cluster)
            _start, ingest_s, _acked = send(ingest, [n.scp for n in nodes], args.senders, args.series_per_association, INGEST_AET)
            node_cpu, machine_cpu, load_cpu, pg_cpu = meter.cores()
            wait_complete(index, len(ingest), args.timeout)
            x1, files1 = xid(), written()
            # Phase 2: new series sent as JOBS: ct-body runs on each, SEG and SR go to the receiver.
            n2 = sum(len(s.files) for s in jobs)
            meter = Meter([n.proc.pid for n in nodes], cluster)
            start, mixed_s, acked = send(jobs, [n.scp for n in nodes], args.senders, args.series_per_association, JOBS_AET)
            delivered = wait_delivered(receiver, len(jobs), nodes, args.timeout)
            x2, jobs_cpu = xid(), meter.cores()[1]
            time.sleep(args.settle)  # a duplicate delivery that comes late still counts
            facts = read_index(index)
        finally:
            index.close()
    end = max(delivered.values(), default=time.time())
    done = facts.done_series  # per series: a duplicate job's work counts against the series it repeats
    per_instance = (x1 - x0) / n1
    run = Run(
        ingest_ips=n1 / ingest_s, mixed_ips=n2 / mixed_s,
        jobs_per_s=done / max(end - facts.first_completed, 1e-6) if facts.first_completed else float("nan"),
        p95_s=percentile([delivered[s] - acked[s] for s in delivered if s in acked], 0.95),
        infer_s=statistics.median(facts.infer_s) if facts.infer_s else float("nan"),
        ingest_node_cpu=node_cpu, ingest_machine_cpu=machine_cpu, ingest_load_cpu=load_cpu, jobs_machine_cpu=jobs_cpu,
        ingest_files_per_instance=files1 / n1,
        files_per_job=(written() - files1 - n2 * files1 / n1) / max(done, 1),
        dup_events=sum(n - 1 for n in facts.events_per_series.values() if n > 1),
        dup_jobs=sum(n - 1 for n in facts.jobs_per_series.values() if n > 1),
        dup_deliveries=receiver.duplicates(), failed_jobs=sum(v for k, v in facts.job_states.items() if k != "done"),
        undelivered=len(jobs) - len(delivered))
    if database:
        run.ingest_pg_cpu, run.idle_commits_per_s = pg_cpu, idle
        run.ingest_commits_per_instance = per_instance
        run.commits_per_job = (x2 - x1 - n2 * per_instance) / max(done, 1)
        run.jobs_commits_per_s = (x2 - x1) / max(end - start, 1e-6)
    return run


def main() -> int:
    """Generate the series, start PostgreSQL and the receiver, measure every configuration, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--series", type=int, default=40, help="series per phase")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="rows = columns")
    ap.add_argument("--senders", type=int, default=6, help="concurrent storescu streams (6: an equal share for 1, 2, 3 nodes)")
    ap.add_argument("--series-per-association", type=int, default=0,
                    help="series per association; 0 = all of a sender's series on one association")
    ap.add_argument("--s3-nodes", type=int, nargs="*", default=[1, 3],
                    help="node counts with the spool's shared copy on moto S3 (storage.spool_url); none: no S3 rows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quiet-period", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of idle nodes to count the pollers' commits")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the last delivery to catch duplicates")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without progress before giving up")
    ap.add_argument("--pgbench-seconds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench-cluster")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        print("DCMTK storescu not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    ingest = make_series(args.work, "ingest", args.series, args.slices, args.size)
    jobs = make_series(args.work, "jobs", args.series, args.slices, args.size)
    configs = [Config("anchor", "one node, embedded default (SQLite, local spool)", 1)]
    configs += [Config(f"pg{n}", "PostgreSQL + shared spool folder", n) for n in args.nodes]
    configs += [Config(f"s3n{n}", "PostgreSQL + spool on S3 (moto)", n, s3=True) for n in args.s3_nodes]
    receiver = Receiver()
    probes: dict[str, list[float]] = {"pgbench_1": [], "pgbench_8": [], "fsync": [], "s3_puts": []}
    try:
        with ExitStack() as stack:
            cluster = stack.enter_context(postgres_cluster(fsync=True))
            moto = None
            if args.s3_nodes:
                try:
                    moto = stack.enter_context(moto_s3([SPOOL_BUCKET]))
                except MotoUnavailable as exc:
                    print(f"no S3 rows: {exc}", file=sys.stderr)
                    configs = [c for c in configs if not c.s3]
            for rep in range(args.repeats):
                # The shared disk's speed moves with the other work on the machine: probed once per repeat.
                probes["pgbench_1"].append(pgbench_tps(cluster, 1, args.pgbench_seconds, args.work))
                probes["pgbench_8"].append(pgbench_tps(cluster, 8, args.pgbench_seconds, args.work))
                probes["fsync"].append(fsync_writes_per_s(args.work / "fsync-probe", args.size * args.size * 2, 2.0))
                if moto is not None:
                    probes["s3_puts"].append(s3_puts_per_s(moto.client, SPOOL_BUCKET, args.size * args.size * 2, 2.0))
                for config in configs:  # interleaved, so drift in the machine's load hits all alike
                    print(f"repeat {rep + 1}/{args.repeats}: {config.key}", file=sys.stderr, flush=True)
                    config.runs.append(measure(f"{config.key}_{rep}", config.nodes, None if config.key == "anchor" else cluster,
                                               moto if config.s3 else None, ingest, jobs, receiver, args))
    except PostgresUnavailable as exc:
        print(f"PostgreSQL unavailable: {exc}", file=sys.stderr)
        return 2
    finally:
        receiver.server.shutdown()
    report(configs, {k: statistics.median(v) if v else float("nan") for k, v in probes.items()}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
