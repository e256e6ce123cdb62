"""REST predict benchmark: ``POST /v1/models/{name}:predict`` under 1, 8 and 32 concurrent clients.

Starts the same :class:`dicom_node.node.Node` that ``dicom-node serve`` runs
(real uvicorn on loopback, ONNX Runtime backend) and drives it with httpx
clients on threads: ``ct-body`` on a 512x512 CT slice sent as DICOM (ct-body
takes HU and refuses images), and the image model ``image-cnn`` on a 512x512
8-bit PNG. Reports requests/s, p50/p99 latency and the micro-batcher's mean
batch size over the run (``Predictor.stats()``), next to the anchor: the same
ONNX session called directly in-process on a prepared single-item batch.
The clients run in their own processes (spawned before the node starts) but share the machine's cores
with the node, so with few cores the numbers are a lower bound of the server alone.

Run: ``.venv/bin/python bench/api.py`` (``--requests 32`` for a smoke run).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from dicom_node.api.server import ApiFrontend
from dicom_node.config import NodeConfig
from dicom_node.node import Node
from dicom_node.progress import bar
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.models.image_store import build_models_dir

log = logging.getLogger("bench.api")


def payloads() -> dict[str, bytes]:
    """A 512x512 CT slice as DICOM (for ct-body) and a 512x512 8-bit PNG (for image-cnn)."""
    from PIL import Image

    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=512, columns=512, seed="bench-api"))).save_as(buf, enforce_file_format=True)
    png = io.BytesIO()
    Image.fromarray((np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)).save(png, "PNG")
    return {"ct-body": buf.getvalue(), "image-cnn": png.getvalue()}


def start_node(root: Path, ort_threads: int = 0) -> Node:
    """A node with ct-body and image-cnn on ONNX Runtime, API on an ephemeral loopback port."""
    models = build_models_dir(root / "models")
    config = NodeConfig.model_validate({
        "scp": {"port": 0}, "api": {"port": 0, "max_body_bytes": 64 * 1024 * 1024},
        "storage": {"root": str(root / "node"), "min_free_bytes": 0, "fsync": False},
        "inference": {"models_dir": str(models), "backends": ["onnxruntime"],
                      "onnxruntime_threads": ort_threads},
    })
    node = Node(config, frontend=ApiFrontend)
    node.start()
    return node


def _client(url: str, body: dict[str, Any], count: int) -> list[float]:
    """One client process: ``count`` sequential requests; returns their latencies."""
    import httpx

    latencies = []
    with httpx.Client(timeout=120) as http:
        for _ in range(count):
            t0 = time.perf_counter()
            r = http.post(url, json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200 or "error" in r.json()["predictions"][0]:
                raise RuntimeError(f"request failed: {r.text[:300]}")
    return latencies


def drive(pool: ProcessPoolExecutor, url: str, body: dict[str, Any], clients: int, total: int) -> tuple[list[float], float]:
    """``total`` requests from ``clients`` client processes; returns per-request latencies and wall time."""
    per_client = max(1, total // clients)
    t0 = time.perf_counter()
    futures = [pool.submit(_client, url, body, per_client) for _ in range(clients)]
    latencies = [x for f in futures for x in f.result()]
    return latencies, time.perf_counter() - t0


def anchor(node: Node, model: str, shape: tuple[int, ...], repeats: int) -> list[float]:
    """Direct ``InferenceSession.run`` on one prepared item (the model's own ONNX file)."""
    import onnxruntime as ort

    entry = node.models.predictor(model).entry
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    feed = {entry.spec.tensors.inputs[0].name: np.zeros(shape, np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


def ms(values: list[float], q: float) -> float:
    """Quantile ``q`` of ``values`` in milliseconds."""
    return 1000.0 * float(np.quantile(values, q))


def run(args: argparse.Namespace) -> list[str]:
    """Run every case; returns the Markdown table lines."""
    rows = ["| model (input) | clients | requests | req/s | p50 ms | p99 ms | mean batch |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    clients_max = max(args.clients)
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(clients_max, mp_context=get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.2] * clients_max))  # start every client process before measuring
        node = start_node(Path(tmp), args.ort_threads)
        try:
            url = f"http://127.0.0.1:{node.api.port}/v1/models/{{}}:predict"
            items = payloads()
            shown = bar(len(items) * (len(args.clients) + 1), desc="api", unit="point")
            for model, data in items.items():
                label = f"{model} ({'DICOM' if model == 'ct-body' else 'PNG'} 512x512)"
                body = {"instances": [{"input_bytes": base64.b64encode(data).decode()}]}
                predictor = node.models.predictor(model)
                drive(pool, url.format(model), body, 1, 2)  # warm-up: model open, first batch
                for clients in args.clients:
                    before = predictor.stats()
                    lat, wall = drive(pool, url.format(model), body, clients, max(args.requests, clients))
                    after = predictor.stats()
                    mean_batch = (after.items - before.items) / max(1, after.batches - before.batches)
                    rows.append(f"| {label} | {clients} | {len(lat)} | {len(lat) / wall:.1f} | {ms(lat, 0.5):.1f} | "
                                f"{ms(lat, 0.99):.1f} | {mean_batch:.2f} |")
                    shown.update(1)
                shape = (1, 1, 512, 512) if model == "ct-body" else (1, 1, 64, 64)
                times = anchor(node, model, shape, args.requests)
                rows.append(f"| {label}: anchor, ORT session.run in-process, batch 1 | - | {len(times)} | "
                            f"{1 / statistics.median(times):.1f} | {ms(times, 0.5):.1f} | {ms(times, 0.99):.1f} | 1 |")
                shown.update(1)
            shown.close()
        finally:
            node.stop()
    return rows


def main() -> int:
    """Parse arguments, run, write the table to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per case (at least one per client)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--ort-threads", type=int, default=0, help="[inference] onnxruntime_threads (0: ORT's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write("\n".join(run(args)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
