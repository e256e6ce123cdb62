"""Cluster benchmark (issue 18): 1, 2 and 3 ``dicom-node serve`` processes on one PostgreSQL, beside the embedded default.

Same run, side by side, each configuration on an empty database and storage root:

- anchor: one node on the embedded default (SQLite index and a local spool under its own root);
- ``postgresql x N`` for N in ``--nodes``: N node processes sharing one PostgreSQL 15 database (a
  throwaway cluster started as the tests start it, tests/peers/postgres.py, with ``fsync=on`` so a commit
  costs what it costs on this disk) and one spool folder (``storage.root``, a shared filesystem path).

Every node routes CT to the bundled ``ct-body`` model (ONNX Runtime on CPU) and delivers SEG and SR by
C-STORE to one pynetdicom Storage SCP in this process. ``--series`` synthetic CT series (fresh UIDs each,
``--slices`` slices of ``--size``\\ :sup:`2`) are sent by ``--senders`` concurrent DCMTK ``storescu``
processes (TCP_NODELAY=1), one association per series, series ``i`` to node ``i mod N`` (round-robin, as a
TCP load balancer spreads associations). Measured per configuration (medians of ``--repeats``):

- ingest instances/s: instances over the wall time from the first association to the last release;
- jobs/s: jobs done over the time from the first series completion (``series.completed_at``) to the last
  result delivered (both SEG and SR of a series at the receiver);
- p95 seconds from a series' last instance (its storescu returned) to its result delivered; the quiet
  period (``--quiet-period``) is part of it;
- per stage: database transactions committed per second (``pg_stat_database.xact_commit`` delta over the
  send-to-last-delivery window, and over an idle window before sending), spool files written per second,
  inference seconds per job (``jobs.stage_times``), CPU of each node process, of PostgreSQL and of the
  whole machine (``/proc/stat``);
- duplicates: series completion events, jobs and deliveries beyond one per series (PS3.4 leaves that to
  us: a series completed twice is a job run twice).

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
    xact_commit,
)
from bench.common import ROOT, checkout_env, cpu_seconds, free_port, percentile, wait_port  # noqa: E402
from dicom_node.synthetic import SeriesSpec, write_ct_series  # noqa: E402
from tests.peers.postgres import PgCluster, PostgresUnavailable, postgres_cluster  # noqa: E402

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


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
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            with self._lock:
                self.arrivals.append((str(ds.StudyInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                      time.time()))
            return 0

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

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


def make_series(work: Path, count: int, slices: int, size: int) -> list[Series]:
    """``count`` CT series with distinct UIDs (seeded, so cached on disk between runs)."""
    out = []
    for i in range(count):
        folder = work / "series" / f"{slices}x{size}" / f"{i:04d}"
        if len(list(folder.glob("*.dcm"))) != slices:
            shutil.rmtree(folder, ignore_errors=True)
            write_ct_series(folder, SeriesSpec(slices=slices, rows=size, columns=size, seed=f"cluster-{slices}-{size}-{i}"))
        files = sorted(folder.glob("*.dcm"))
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        out.append(Series(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), files))
    return out


def node_config(work: Path, name: str, root: Path, database: str | None, dest: int, quiet: float) -> tuple[Path, int, int]:
    """One node's config file: its ports, the shared (or own) root and database, ct-body on CT, one destination."""
    scp, api = free_port(), free_port()
    db = f'database = "{database}"\n' if database else ""
    conf = work / f"{name}.toml"
    conf.write_text(
        f'[scp]\nport = {scp}\n[api]\nport = {api}\n'
        f'[storage]\nroot = "{root}"\nmin_free_bytes = 0\n{db}'
        f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n'
        f'[assembly]\nquiet_period = {quiet}\npoll_interval = 0.1\n[jobs]\npoll_interval = 0.1\n'
        '[logging]\nlevel = "WARNING"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["dest"]\n[routing.rules.match]\nmodality = "CT"\n'
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


@contextmanager
def start_nodes(work: Path, count: int, database: str | None, dest: int, quiet: float) -> Iterator[list[Node]]:
    """``count`` nodes on one root (and database); all ready (``/readyz``, DICOM port open) before yielding."""
    root = work / "shared-root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    nodes: list[Node] = []
    try:
        for i in range(count):
            conf, scp, api = node_config(work, f"node{i}", root, database, dest, quiet)
            log = work / f"node{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(conf)], cwd=work,
                                        stdout=out, stderr=out, env=checkout_env())
            nodes.append(Node(proc, scp, api, log))
        http = requests.Session()
        http.trust_env = False
        for node in nodes:
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


def send(series: list[Series], ports: list[int], senders: int) -> tuple[float, float, dict[str, float]]:
    """Send every series (one storescu association each, series i to ports[i % N]) from ``senders`` threads.

    Returns the start time, the wall seconds and, per study, when its storescu returned (last instance
    acknowledged and association released).
    """
    done: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(enumerate(series))
    env = checkout_env(TCP_NODELAY="1")

    def worker() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                i, s = queue.pop(0)
            run = subprocess.run(["storescu", "-aec", "DICOM_NODE", "--max-pdu", "131072", "127.0.0.1",
                                  str(ports[i % len(ports)]), *map(str, s.files)], env=env, capture_output=True, check=False)
            with lock:
                if run.returncode != 0:
                    errors.append(run.stderr.decode(errors="replace")[-500:])
                done[s.study] = time.time()

    start, t0 = time.time(), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"storescu failed: {errors[0]}")
    return start, time.perf_counter() - t0, done


@dataclass
class Run:
    """What one configuration measured in one repeat (rates per second of wall time, CPU in cores)."""

    ingest_ips: float
    jobs_per_s: float
    p95_s: float
    infer_s: float
    files_per_s: float
    files_per_instance: float
    node_cpu: list[float]
    machine_cpu: float
    load_cpu: float
    pg_cpu: float = float("nan")
    commits_per_s: float = float("nan")
    idle_commits_per_s: float = float("nan")
    commits_per_instance: float = float("nan")
    all_commits_per_s: float = float("nan")
    dup_events: int = 0
    dup_jobs: int = 0
    dup_deliveries: int = 0
    failed_jobs: int = 0
    undelivered: int = 0


@dataclass
class Facts:
    """What the index says after a run."""

    job_states: Counter[str]
    jobs_per_series: Counter[str]
    events_per_series: Counter[str]
    infer_s: list[float]
    first_completed: float


def read_index(location: str | Path) -> Facts:
    """Jobs, series completion events and the first completion time, read through the index layer (either backend)."""
    from dicom_node.index import Index

    index = Index(location)
    conn = index.reader()
    try:
        jobs = conn.execute("SELECT series_instance_uid, state, stage_times FROM jobs").fetchall()
        events = conn.execute("SELECT series_instance_uid FROM events WHERE kind = 'series_complete'").fetchall()
        first = conn.execute("SELECT MIN(completed_at) FROM series").fetchone()[0]
    finally:
        conn.close()
        index.close()
    infer = [float(json.loads(stages).get("infer", 0.0)) for _s, state, stages in jobs if state == "done"]
    return Facts(Counter(str(r[1]) for r in jobs), Counter(str(r[0]) for r in jobs), Counter(str(r[0]) for r in events),
                 infer, float(first or 0.0))


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


def measure(name: str, count: int, cluster: PgCluster | None, series: list[Series], receiver: Receiver,
            args: argparse.Namespace) -> Run:
    """Start ``count`` nodes (on PostgreSQL when ``cluster`` is given), send everything, wait for every result."""
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    database = create_database(cluster, "bench_" + "".join(c if c.isalnum() else "_" for c in name)) if cluster else None
    receiver.reset()
    lifetime_start = time.monotonic()
    with start_nodes(work, count, database, receiver.port, args.quiet_period) as nodes:
        pids = [n.proc.pid for n in nodes]
        idle = float("nan")
        if database:  # what the nodes commit doing nothing: the pollers' cost per node
            x = next_xid(database)
            time.sleep(args.idle)
            idle = (next_xid(database) - x) / args.idle
        cpu0, m0, load0 = [cpu_seconds(p) for p in pids], machine_busy(), cpu_seconds(os.getpid())
        pg0 = pg_cpu_seconds(cluster) if cluster else 0.0
        x0 = next_xid(database) if database else 0
        start, ingest_s, acked = send(series, [n.scp for n in nodes], args.senders)
        delivered = wait_delivered(receiver, len(series), nodes, args.timeout)
        end = max(delivered.values(), default=time.time())
        window = max(end - start, 1e-6)
        cpu1, m1, load1 = [cpu_seconds(p) for p in pids], machine_busy(), cpu_seconds(os.getpid())
        pg1 = pg_cpu_seconds(cluster) if cluster else 0.0
        x1 = next_xid(database) if database else 0
        time.sleep(args.settle)  # a duplicate delivery that comes late still counts
        duplicates = receiver.duplicates()
    lifetime = time.monotonic() - lifetime_start
    root = work / "shared-root"
    facts = read_index(database or root / "index.sqlite3")
    instances = sum(len(s.files) for s in series)
    done = facts.job_states.get("done", 0)
    files = files_under(root)
    jobs_window = max(end - facts.first_completed, 1e-6) if facts.first_completed else float("nan")
    ticks = max(m1[1] - m0[1], 1)
    run = Run(
        ingest_ips=instances / ingest_s, jobs_per_s=done / jobs_window,
        p95_s=percentile([delivered[s] - acked[s] for s in delivered if s in acked], 0.95),
        infer_s=statistics.median(facts.infer_s) if facts.infer_s else float("nan"),
        files_per_s=files / window, files_per_instance=files / instances,
        node_cpu=[(b - a) / window for a, b in zip(cpu0, cpu1, strict=True)],
        machine_cpu=(m1[0] - m0[0]) / ticks * (os.cpu_count() or 1), load_cpu=(load1 - load0) / window,
        dup_events=sum(n - 1 for n in facts.events_per_series.values() if n > 1),
        dup_jobs=sum(n - 1 for n in facts.jobs_per_series.values() if n > 1),
        dup_deliveries=duplicates, failed_jobs=sum(v for k, v in facts.job_states.items() if k != "done"),
        undelivered=len(series) - len(delivered))
    if database and cluster:
        run.pg_cpu = (pg1 - pg0) / window
        run.commits_per_s = (x1 - x0) / window
        run.idle_commits_per_s = idle
        run.commits_per_instance = (x1 - x0) / instances
        run.all_commits_per_s = xact_commit(database) / lifetime  # flushed by the backends as the nodes exited
    return run


def med(runs: list[Run], attr: str) -> float:
    """Median of one measure over the repeats."""
    return statistics.median(float(getattr(r, attr)) for r in runs)


def report(configs: list[tuple[str, str, int]], runs: dict[str, list[Run]], capacity: dict[str, float],
           args: argparse.Namespace) -> None:
    """Print the side-by-side tables and the saturation arithmetic."""
    anchor = runs[configs[0][0]]
    print(f"\n{args.series} series x {args.slices} slices of {args.size}x{args.size} CT ({args.series * args.slices} "
          f"instances), {args.senders} storescu senders, quiet period {args.quiet_period} s, ct-body on ONNX Runtime "
          f"CPU, {os.cpu_count()} cores; medians of {args.repeats}; ratio = this / anchor.\n")
    print("| configuration | nodes | instances/s | ratio | jobs/s | ratio | p95 last instance -> result delivered (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, label, count in configs:
        r = runs[key]
        cells = [f"{med(r, a):.{d}f} | {med(r, a) / med(anchor, a):.2f}x" for a, d in
                 (("ingest_ips", 0), ("jobs_per_s", 2), ("p95_s", 2))]
        print(f"| {label} | {count} | " + " | ".join(cells) + " |")
    print("\nPer stage (medians; CPU in cores over the send-to-last-delivery window; duplicates and failures summed over repeats):\n")
    print("| configuration | writing commits/s | idle writing commits/s | writing commits per instance | all transactions/s, lifetime "
          "| files written/s | files per instance | inference s/job | CPU per node | PostgreSQL CPU | senders + receiver CPU | machine CPU "
          "| duplicate events / jobs / deliveries | failed jobs / undelivered series |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|")
    for key, label, _count in configs:
        r = runs[key]
        per_node = " + ".join(f"{statistics.median(x.node_cpu[i] for x in r):.2f}" for i in range(len(r[0].node_cpu)))
        print(f"| {label} | {med(r, 'commits_per_s'):.0f} | {med(r, 'idle_commits_per_s'):.1f} | "
              f"{med(r, 'commits_per_instance'):.2f} | {med(r, 'all_commits_per_s'):.0f} | {med(r, 'files_per_s'):.0f} | "
              f"{med(r, 'files_per_instance'):.2f} | {med(r, 'infer_s'):.3f} | {per_node} | {med(r, 'pg_cpu'):.2f} | {med(r, 'load_cpu'):.2f} | "
              f"{med(r, 'machine_cpu'):.2f} | {sum(x.dup_events for x in r)} / {sum(x.dup_jobs for x in r)} / "
              f"{sum(x.dup_deliveries for x in r)} | {sum(x.failed_jobs for x in r)} / {sum(x.undelivered for x in r)} |")
    print(f"\nCapacity of the shared parts, same run: pgbench one-row INSERT commits/s {capacity['pgbench_1']:.0f} "
          f"(1 client), {capacity['pgbench_8']:.0f} (8 clients), PostgreSQL 15 fsync=on, this disk; fsync'd file "
          f"creations/s in the spool's folder (one writer, {args.size * args.size * 2 // 1024} KiB): {capacity['fsync']:.0f}.")
    saturation(configs, runs, capacity)


def saturation(configs: list[tuple[str, str, int]], runs: dict[str, list[Run]], capacity: dict[str, float]) -> None:
    """Where 10 and 100 nodes would saturate first, from the one-node PostgreSQL row (one node per machine)."""
    one = next((runs[k] for k, _label, n in configs if n == 1 and k != configs[0][0]), None)
    if one is None:
        return
    ips, jps, cpi = med(one, "ingest_ips"), med(one, "jobs_per_s"), med(one, "commits_per_instance")
    fpi, infer, idle = med(one, "files_per_instance"), med(one, "infer_s"), med(one, "idle_commits_per_s")
    db_node = ips * cpi
    files_node = ips * fpi
    print(f"\nSaturation, per node as measured with one node on PostgreSQL: {ips:.0f} instances/s x {cpi:.2f} writing "
          f"commits per instance = {db_node:.0f} commits/s (idle: {idle:.1f}/s); {ips:.0f} x {fpi:.2f} files per "
          f"instance = {files_node:.0f} file writes/s; {jps:.2f} jobs/s x {infer:.3f} s inference = "
          f"{jps * infer:.2f} inference-seconds per second.\n")
    print("| nodes | database commits/s needed | share of pgbench (8 clients) | file writes/s needed | share of one "
          "local disk's fsync'd creations | inference-seconds/s needed (shared farm) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (1, 10, 100):
        print(f"| {n} | {n * db_node:.0f} | {n * db_node / capacity['pgbench_8']:.0%} | {n * files_node:.0f} | "
              f"{n * files_node / capacity['fsync']:.0%} | {n * jps * infer:.1f} |")
    print(f"\nNodes one PostgreSQL takes before its commits saturate: {capacity['pgbench_8'] / db_node:.1f}; "
          f"before one local disk's fsync'd file creations do: {capacity['fsync'] / files_node:.1f}.")


def main() -> int:
    """Generate the series, start PostgreSQL and the receiver, measure every configuration, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--series", type=int, default=40)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="rows = columns")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quiet-period", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of idle nodes to count the pollers' commits")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the last delivery to catch duplicates")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without a new delivery before giving up")
    ap.add_argument("--pgbench-seconds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench-cluster")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        print("DCMTK storescu not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    series = make_series(args.work, args.series, args.slices, args.size)
    configs = [("anchor", "one node, embedded default (SQLite, local spool)", 1)]
    configs += [(f"pg{n}", "PostgreSQL + shared spool folder", n) for n in args.nodes]
    runs: dict[str, list[Run]] = {key: [] for key, _label, _n in configs}
    receiver = Receiver()
    try:
        with ExitStack() as stack:
            try:
                cluster = stack.enter_context(postgres_cluster(fsync=True))
            except PostgresUnavailable as exc:
                print(f"PostgreSQL unavailable: {exc}", file=sys.stderr)
                return 2
            capacity = {"pgbench_1": pgbench_tps(cluster, 1, args.pgbench_seconds, args.work),
                        "pgbench_8": pgbench_tps(cluster, 8, args.pgbench_seconds, args.work),
                        "fsync": fsync_writes_per_s(args.work / "fsync-probe", args.size * args.size * 2, 2.0)}
            for rep in range(args.repeats):
                for key, _label, count in configs:  # interleaved, so drift in the machine hits all alike
                    print(f"repeat {rep + 1}/{args.repeats}: {key}", file=sys.stderr, flush=True)
                    runs[key].append(measure(key, count, None if key == "anchor" else cluster, series, receiver, args))
    finally:
        receiver.server.shutdown()
    report(configs, runs, capacity, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
