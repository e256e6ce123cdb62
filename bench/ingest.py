"""Ingest benchmark: DCMTK storescu -> (a) DCMTK storescp, (b) dicom-node serve.

Generates a synthetic CT series (default 512 slices of 512x512, 16-bit, Explicit
VR Little Endian), then sends it over loopback with ``storescu`` (TCP_NODELAY=1,
``--max-pdu 131072``) with 1 and 4 parallel associations to each receiver, in the
same run, and prints a Markdown table of medians with the ratio to storescp.

It also times, in the same run and over the same files, the element-framing walk
that ingest runs on every instance before acknowledging it (``ingest.check_framing``,
issue 14), and prints its cost as a share of dicom-node's time per instance.

storescp writes files without fsync; dicom-node acknowledges only after fsync of
the file and its directory entry and a durable index commit, so the ratio is
the price of "nothing acknowledged is ever lost" plus our receive path.

Usage: ``.venv/bin/python bench/ingest.py [--slices 512] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.filereader import read_file_meta_info  # noqa: E402

from bench.common import free_port, wait_port  # noqa: E402
from dicom_node.ingest import check_framing  # noqa: E402
from dicom_node.progress import bar  # noqa: E402
from dicom_node.synthetic import SeriesSpec, write_ct_series  # noqa: E402


def send(files: list[Path], port: int, assocs: int, called_ae: str) -> float:
    """Send ``files`` split over ``assocs`` concurrent storescu processes; return wall seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    groups = [files[i::assocs] for i in range(assocs)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", called_ae, "--max-pdu", "131072", "127.0.0.1", str(port), *map(str, g)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for g in groups
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def run_storescp(files: list[Path], assocs: int, work: Path) -> float:
    """One timed send into a fresh storescp (forking, so associations run in parallel)."""
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.Popen(
        ["storescp", "--fork", "--max-pdu", "131072", "-od", str(out), str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        return send(files, port, assocs, "STORESCP")
    finally:
        proc.terminate()
        proc.wait()


def run_node(files: list[Path], assocs: int, work: Path, fsync: bool = True) -> float:
    """One timed send into a fresh ``dicom-node serve``; checks every instance was indexed.

    ``fsync=False`` is a reference only (storage.fsync = false): it shows the
    receive path alone, on the same terms as storescp, which never fsyncs.
    """
    root = work / "node-root"
    shutil.rmtree(root, ignore_errors=True)
    port = free_port()
    env = dict(
        os.environ,
        DICOM_NODE__STORAGE__ROOT=str(root),
        DICOM_NODE__SCP__PORT=str(port),
        DICOM_NODE__LOGGING__LEVEL="WARNING",
        DICOM_NODE__STORAGE__MIN_FREE_BYTES="0",
        DICOM_NODE__STORAGE__FSYNC="true" if fsync else "false",
    )
    exe = Path(sys.executable).with_name("dicom-node")
    proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        seconds = send(files, port, assocs, "DICOM_NODE")
    finally:
        proc.terminate()
        proc.wait()
    status = subprocess.run([str(exe), "status", "--json"], env=env, capture_output=True, text=True, check=True)
    if f'"instances": {len(files)}' not in status.stdout:
        raise RuntimeError(f"dicom-node indexed a different count: {status.stdout}")
    return seconds


def time_framing(files: list[Path], repeats: int) -> float:
    """Median seconds of ingest's framing walk (``check_framing``) over all ``files``, page cache warm.

    The walk runs on the spooled file right after it is written, so its pages are in
    the cache there too; the cost measured is the walk itself, not the disk.
    """
    meta = []
    for f in files:
        info = read_file_meta_info(f)
        # Preamble (128) + "DICM" (4) + the group length element (12) + the rest of group 0002.
        meta.append((f, 144 + int(info.FileMetaInformationGroupLength), str(info.TransferSyntaxUID)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path, offset, syntax in meta:
            check_framing(path, offset, syntax, 2 * 1024**3)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=512, help="rows = columns")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--assocs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench")
    args = ap.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        print("DCMTK storescu/storescp not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    series = args.work / f"ct-{args.slices}x{args.size}"
    if not series.is_dir() or len(list(series.glob("*.dcm"))) != args.slices:
        shutil.rmtree(series, ignore_errors=True)
        write_ct_series(series, SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed="bench"))
    files = sorted(series.glob("*.dcm"))
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    rows = []
    shown = bar(len(args.assocs) * args.repeats * 3, desc="ingest", unit="run")
    for assocs in args.assocs:
        times: dict[str, list[float]] = {"storescp": [], "dicom-node": [], "dicom-node, fsync off (reference)": []}
        for _ in range(args.repeats):
            # Interleave receivers so drift in the machine's state hits all alike.
            times["storescp"].append(run_storescp(files, assocs, args.work))
            shown.update(1)
            times["dicom-node"].append(run_node(files, assocs, args.work))
            shown.update(1)
            times["dicom-node, fsync off (reference)"].append(run_node(files, assocs, args.work, fsync=False))
            shown.update(1)
        anchor = statistics.median(times["storescp"])
        for name, samples in times.items():
            med = statistics.median(samples)
            rows.append((name, assocs, med, len(files) / med, total_mb / med, anchor / med))
    shown.close()
    print(f"\n{len(files)} instances, {total_mb:.0f} MB, {args.repeats} repeats, medians; "
          f"storescu TCP_NODELAY=1 --max-pdu 131072, loopback\n")
    print("| receiver | associations | seconds | instances/s | MB/s | ratio to storescp |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, assocs, med, ips, mbs, ratio in rows:
        print(f"| {name} | {assocs} | {med:.2f} | {ips:.0f} | {mbs:.0f} | {ratio:.2f}x |")
    walk = time_framing(files, args.repeats)
    print(f"\nFraming walk before each ack (issue 14; target under 10% of throughput): "
          f"{walk / len(files) * 1e3:.3f} ms per instance, {walk:.3f} s for all {len(files)}\n")
    print("| associations | dicom-node per instance | framing walk share |")
    print("|---:|---:|---:|")
    for name, assocs, med, _ips, _mbs, _ratio in rows:
        if name == "dicom-node":
            print(f"| {assocs} | {med / len(files) * 1e3:.3f} ms | {walk / med:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
