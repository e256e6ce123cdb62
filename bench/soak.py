"""Soak: steady mixed load on one node for a long time; does anything grow or slow down?

Starts ``dicom-node serve`` as a child process (the process users run: SQLite,
local spool, ONNX Runtime on CPU, the bundled ``ct-body`` model routed to every
CT series) and keeps three loads going at a steady pace for ``--duration``
seconds:

- C-STORE: a small CT series (``--slices`` slices) by pynetdicom every
  ``--store-interval`` seconds, each on a fresh association and with fresh UIDs,
  so each series is assembled, routed and run through ``ct-body`` (SEG + SR);
- REST predict: ``POST /v1/models/ct-body:predict`` with one slice, every
  ``--predict-interval`` seconds;
- invocations: ``POST /v1/invocations`` with one slice, every
  ``--invoke-interval`` seconds, polled until done.

It samples the node's resident memory (VmRSS and VmHWM), open file descriptors
and threads from ``/proc`` every ``--sample-interval`` seconds, and reports the
first and last tenth of the run side by side (the anchor of a soak is its own
start): median RSS, open files and threads, p50/p95/p99 latency per operation,
and the counts of operations and failures. Growth between the two columns is
what to read; nothing is asserted.

Run: ``.venv/bin/python bench/soak.py`` (an hour); ``--duration 20`` for a smoke run.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.common import checkout_env, free_port, percentile  # noqa: E402
from dicom_node.synthetic import SeriesSpec, ct_datasets  # noqa: E402


@dataclass
class Ops:
    """Latencies and failures of one operation kind, timestamped relative to the run's start."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, seconds: float) -> None:
        with self.lock:
            self.samples.append((t, seconds))

    def fail(self, t: float, reason: str) -> None:
        with self.lock:
            self.failures.append((t, reason[:200]))


def proc_sample(pid: int) -> dict[str, float]:
    """RSS and peak RSS (MiB), open file descriptors and threads of ``pid`` from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = lambda key: float(status[key].split()[0]) / 1024  # noqa: E731
    return {"rss_mib": kib("VmRSS"), "hwm_mib": kib("VmHWM"), "threads": float(status["Threads"].strip()),
            "fds": float(len(os.listdir(f"/proc/{pid}/fd")))}


def slice_bytes(seed: str) -> bytes:
    """One 128x128 CT slice as a Part 10 file."""
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=128, columns=128, seed=seed))).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def store_series(port: int, slices: int, seq: int) -> None:
    """Send one fresh CT series (new Study/Series/SOP UIDs) on one association."""
    ae = AE(ae_title="SOAK")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    if not assoc.is_established:
        raise RuntimeError("association not established")
    try:
        study, series = generate_uid(), generate_uid()
        for ds in ct_datasets(SeriesSpec(slices=slices, rows=128, columns=128, seed=f"soak-{seq}")):
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE status {getattr(status, 'Status', None)}")
    finally:
        assoc.release()


def every(interval: float, stop: threading.Event, start: float, ops: Ops, action: Callable[[int], None]) -> None:
    """Run ``action`` every ``interval`` seconds (steady pace, not back to back) until ``stop``."""
    seq = 0
    next_at = time.monotonic()
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            action(seq)
            ops.add(t0 - start, time.monotonic() - t0)
        except Exception as exc:  # a failed operation is a result of the soak, not the end of it
            ops.fail(t0 - start, f"{type(exc).__name__}: {exc}")
        seq += 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def write_config(work: Path, scp: int, api: int, quiet: float) -> Path:
    """The node's config: embedded defaults plus ports, a short quiet period and ct-body on every CT series."""
    conf = work / "node.toml"
    conf.write_text(
        f'[scp]\nport = {scp}\n[api]\nport = {api}\n[storage]\nroot = "var"\nmin_free_bytes = 0\n'
        f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n'
        f'[assembly]\nquiet_period = {quiet}\n[logging]\nlevel = "WARNING"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = []\n[routing.rules.match]\nmodality = "CT"\n')
    return conf


def report(samples: list[tuple[float, dict[str, float]]], ops: dict[str, Ops], duration: float) -> None:
    """Print the first and last tenth of the run side by side."""
    window = max(duration / 10, 1.0)
    first = lambda t: t <= window  # noqa: E731
    last = lambda t: t >= duration - window  # noqa: E731
    print(f"\nSoak of {duration:.0f} s; columns: first and last {window:.0f} s of the run (medians of samples).\n")
    print("| measure | start | end | end / start |")
    print("|---|---:|---:|---:|")
    for key, label in (("rss_mib", "RSS (MiB)"), ("hwm_mib", "peak RSS so far (MiB)"), ("fds", "open files"),
                       ("threads", "threads")):
        a = statistics.median([s[key] for t, s in samples if first(t)] or [float("nan")])
        b = statistics.median([s[key] for t, s in samples if last(t)] or [float("nan")])
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f} |")
    for name, op in ops.items():
        a = [s for t, s in op.samples if first(t)]
        b = [s for t, s in op.samples if last(t)]
        for q in (0.5, 0.95, 0.99):
            pa, pb = percentile(a, q) * 1000, percentile(b, q) * 1000
            print(f"| {name} p{int(q * 100)} (ms) | {pa:.0f} | {pb:.0f} | {pb / pa if pa else float('nan'):.2f} |")
    print("\n| operation | done | failed | first failure |")
    print("|---|---:|---:|---|")
    for name, op in ops.items():
        print(f"| {name} | {len(op.samples)} | {len(op.failures)} | {op.failures[0][1] if op.failures else ''} |")


def job_states(http: requests.Session, base: str) -> dict[str, int]:
    """Count the node's jobs by state, walking every page of ``GET /v1/jobs``."""
    states: dict[str, int] = {}
    cursor: str | None = None
    while True:
        page = http.get(f"{base}/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}, timeout=30)
        page.raise_for_status()
        body = page.json()
        for job in body["jobs"]:
            states[job["status"]] = states.get(job["status"], 0) + 1
        cursor = body["next"]
        if not cursor:
            return states


def main() -> int:
    """Start the node, run the loads, sample, report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--store-interval", type=float, default=20.0)
    ap.add_argument("--predict-interval", type=float, default=1.0)
    ap.add_argument("--invoke-interval", type=float, default=5.0)
    ap.add_argument("--sample-interval", type=float, default=5.0)
    ap.add_argument("--quiet-period", type=float, default=2.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench-soak")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)  # a fresh storage root: the run starts empty
    args.work.mkdir(parents=True)
    scp, api = free_port(), free_port()
    conf = write_config(args.work, scp, api, args.quiet_period)
    log = open(args.work / "node.log", "wb")  # noqa: SIM115  # closed after the node exits
    # ``python -m dicom_node`` with this checkout first on the path: the code measured is the code beside this script.
    node = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(conf)], cwd=args.work,
                            stdout=log, stderr=log, env=checkout_env())
    base = f"http://127.0.0.1:{api}"
    http = requests.Session()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"node not ready; see {args.work / 'node.log'}")
        slice_b64 = base64.b64encode(slice_bytes("soak-predict")).decode()
        upload = slice_bytes("soak-invoke")

        def predict(_: int) -> None:
            r = http.post(f"{base}/v1/models/ct-body:predict", json={"instances": [{"input_bytes": slice_b64}]}, timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"predict HTTP {r.status_code}")

        def invoke(_: int) -> None:
            with requests.Session() as s:
                r = s.post(f"{base}/v1/invocations", params={"model": "ct-body"},
                           files={"image": ("scan.dcm", upload, "application/octet-stream")}, timeout=60)
                if r.status_code != 202:
                    raise RuntimeError(f"invocation HTTP {r.status_code}")
                uuid = r.json()["request_uuid"]
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    state = s.get(f"{base}/v1/invocations/{uuid}", timeout=10).json().get("state")
                    if state in ("done", "failed", "dead-letter"):
                        if state != "done":
                            raise RuntimeError(f"invocation {state}")
                        return
                    time.sleep(0.1)
                raise RuntimeError("invocation not done in 120 s")

        ops = {"C-STORE series": Ops(), "REST predict": Ops(), "invocation (to done)": Ops()}
        stop = threading.Event()
        start = time.monotonic()
        threads = [threading.Thread(target=every, args=(interval, stop, start, op, action), daemon=True)
                   for interval, op, action in (
                       (args.store_interval, ops["C-STORE series"], lambda seq: store_series(scp, args.slices, seq)),
                       (args.predict_interval, ops["REST predict"], predict),
                       (args.invoke_interval, ops["invocation (to done)"], invoke))]
        for t in threads:
            t.start()
        samples: list[tuple[float, dict[str, float]]] = []
        while (elapsed := time.monotonic() - start) < args.duration:
            if node.poll() is not None:
                raise SystemExit(f"the node exited with {node.returncode}; see {args.work / 'node.log'}")
            samples.append((elapsed, proc_sample(node.pid)))
            time.sleep(min(args.sample_interval, max(0.0, args.duration - elapsed)))
        samples.append((time.monotonic() - start, proc_sample(node.pid)))
        stop.set()
        for t in threads:
            t.join(180)
        report(samples, ops, args.duration)
        drain = time.monotonic() + 180  # let the last series finish: every job of the run is counted at its end state
        while set(job_states(http, base)) - {"done", "failed", "dead-letter"} and time.monotonic() < drain:
            time.sleep(1)
        print("\nJobs at the end (GET /v1/jobs, series jobs and invocations): "
              + ", ".join(f"{k} {v}" for k, v in sorted(job_states(http, base).items())))
    finally:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
