"""Results benchmark: SEG writing against the I/O floor, and end-to-end latency on the embedded default.

1. Build and write the DICOM SEG of a 512-slice 512x512 binary mask with 1 and 3
   segments (highdicom, through ``dicom_node.writers``), beside
   ``numpy.ndarray.tofile`` of the same mask (the I/O floor), in the same run.
2. For a 256-slice 512x512 CT sent by DCMTK storescu to ``dicom-node serve``
   (ONNX Runtime on CPU, ct-body), the time from the last C-STORE response to
   the SEG's arrival at a Storage SCP destination, split per stage; the quiet
   period is excluded and reported on its own line.

Usage: ``.venv/bin/python bench/results.py [--slices 512] [--e2e-slices 256] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port  # noqa: E402
from dicom_node.progress import track  # noqa: E402
from dicom_node.synthetic import SeriesSpec, ct_datasets, write_ct_series  # noqa: E402
from dicom_node.writers.common import to_bytes  # noqa: E402
from dicom_node.writers.seg import build_segmentation  # noqa: E402
from dicom_node.writers.uids import result_uids  # noqa: E402
from inference.store import ModelStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def masks(slices: int, size: int, labels: int) -> np.ndarray:
    """``(slices, rows, cols, labels)`` booleans: nested ellipses, one per label."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((slices, size, size, labels), dtype=bool)
    for n in range(labels):
        r = 0.45 - 0.12 * n
        out[..., n] = (((yy - size / 2) / (r * size)) ** 2 + ((xx - size / 2) / (r * size * 1.1)) ** 2 <= 1)[None]
    return out


def seg_rows(slices: int, repeats: int, work: Path) -> list[str]:
    """Time SEG build+write for 1 and 3 segments against tofile of the same mask."""
    headers = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=512, columns=512, seed="bench-seg")):
        del ds.PixelData
        headers.append(ds)
    spec = ModelStore([ROOT / "engines"]).get("ct-body").spec
    rows = []
    for labels in track((1, 3), desc="SEG", unit="table row"):
        label0 = spec.labels[0]
        spec_n = spec.model_copy(update={"labels": [label0.model_copy(update={"channel": n, "name": f"Region {n + 1}"})
                                                    for n in range(labels)]})
        mask = masks(slices, 512, labels)
        uids = result_uids("2.25.", str(headers[0].SeriesInstanceUID), spec_n.name, spec_n.version)
        seg_t, floor_t, size = [], [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = to_bytes(build_segmentation(headers, mask, spec_n, uids))
            (work / "seg.dcm").write_bytes(data)
            seg_t.append(time.perf_counter() - t0)
            size = len(data)
            t0 = time.perf_counter()
            mask.tofile(work / "mask.raw")
            floor_t.append(time.perf_counter() - t0)
        seg, floor = statistics.median(seg_t), statistics.median(floor_t)
        rows.append(f"| {slices}x512x512, {labels} segment{'s' if labels > 1 else ''} | {seg:.2f} | {floor:.3f} | "
                    f"{seg / floor:.0f}x | {size / 1e6:.1f} MB | {mask.nbytes / 1e6:.0f} MB |")
    return rows


class Arrivals:
    """A Storage SCP (pynetdicom) that notes when each SOP class arrives."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.times: dict[str, float] = {}
        ae = AE(ae_title="RESULTS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._lock = threading.Lock()

        def on_store(event: evt.Event) -> int:
            with self._lock:
                self.times.setdefault(str(event.request.AffectedSOPClassUID), time.time())
            return 0

        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def e2e_once(files: list[Path], work: Path, quiet: float) -> dict[str, float]:
    """One end-to-end run; returns seconds per phase."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "conf").mkdir(parents=True)
    dest, port = free_port(), free_port()
    (work / "conf" / "node.toml").write_text(
        f'[scp]\nport = {port}\n[storage]\nmin_free_bytes = 0\n[inference]\nmodels_dir = "{ROOT / "engines"}"\n'
        f'[assembly]\nquiet_period = {quiet}\npoll_interval = 0.05\n[jobs]\npoll_interval = 0.05\n[logging]\nlevel = "WARNING"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["dest"]\n[routing.rules.match]\nmodality = "CT"\n'
        f'[[delivery.destinations]]\nkind = "dimse"\nname = "dest"\nae_title = "RESULTS"\nhost = "127.0.0.1"\nport = {dest}\n'
    )
    arrivals = Arrivals(dest)
    exe = Path(sys.executable).with_name("dicom-node")
    node = subprocess.Popen([str(exe), "serve"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["storescu", "-aec", "DICOM_NODE", "127.0.0.1", str(port), *map(str, files)],
                       env=dict(os.environ, TCP_NODELAY="1"), check=True, capture_output=True)
        last_response = time.time()
        deadline = time.monotonic() + 300
        while "1.2.840.10008.5.1.4.1.1.66.4" not in arrivals.times and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        node.terminate()
        node.wait()
        arrivals.server.shutdown()
    conn = sqlite3.connect(work / "var" / "index.sqlite3")
    completed = conn.execute("SELECT completed_at FROM series").fetchone()[0]
    created, stages = conn.execute("SELECT created_at, stage_times FROM jobs").fetchone()
    conn.close()
    stage = json.loads(stages)
    seg_at = arrivals.times["1.2.840.10008.5.1.4.1.1.66.4"]
    out = {"quiet period (excluded)": completed - last_response, "routing and queue": created - completed}
    out.update({k: stage[k] for k in ("validate", "decode", "infer", "write")})
    out["deliver (to SEG arrival)"] = seg_at - created - sum(stage[k] for k in ("validate", "decode", "infer", "write"))
    out["total, quiet period excluded"] = seg_at - completed
    return out


def main() -> int:
    """Run both parts and print Markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--e2e-slices", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quiet-period", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench-results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("\n| SEG of | build + write (s) | ndarray.tofile (s) | ratio | SEG size | mask size |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in seg_rows(args.slices, args.repeats, args.work):
        print(row)
    series = args.work / f"ct-{args.e2e_slices}"
    if not series.is_dir():
        write_ct_series(series, SeriesSpec(slices=args.e2e_slices, rows=512, columns=512, seed="bench-e2e"))
    runs = [e2e_once(sorted(series.glob("*.dcm")), args.work / "node", args.quiet_period)
            for _ in track(range(args.repeats), desc="end to end", unit="run")]
    print(f"\nEnd to end, {args.e2e_slices}-slice 512x512 CT, ct-body on ONNX Runtime CPU, "
          f"quiet period {args.quiet_period} s, median of {args.repeats}:\n")
    print("| phase | seconds |")
    print("|---|---:|")
    for key in runs[0]:
        print(f"| {key} | {statistics.median(r[key] for r in runs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
