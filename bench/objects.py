"""Object storage benchmark (issue 16): a CT series read from each emulator, and Vertex predict at micro-batch 1/8/32.

(a) Bucket reads. A synthetic CT series (default 512 slices of 512x512, 16-bit,
Explicit VR Little Endian) is uploaded to ``inputs/bench/series/`` of each emulator,
started exactly as the tests start them (the session fixtures of
``tests/objects_peers.py``: moto's S3 server with IAM auth, fake-gcs-server, Azurite),
then read, interleaved in the same run:

- anchor: the library's own bulk download, obstore ``list`` then ``get_async`` of
  every object on one asyncio loop (``--anchor-concurrency`` at once, default 16),
  each written to a file in a fresh folder, no fsync;
- the node: one poll cycle of a ``kind = "object"`` poller on a fresh storage root
  (listing, reads through ``ObjectStores``, PS3.10 and framing checks, every spool
  file fsynced and indexed before it counts), at ``concurrency`` 4 (the default) and
  ``--node-concurrency``, and once more with ``storage.fsync = false``, the anchor's
  durability.

(b) Vertex predict. ``POST /v1/projects/p/locations/l/endpoints/<model>:predict`` with
``--batches`` (1, 8, 32) PNG instances per request to a node serving the DEMO embedding
model (``engines/demo-image-embedding``, ONNX Runtime on CPU), one client, sequential
requests; the anchor is ``onnxruntime.InferenceSession.run`` on the same images,
decoded and normalised beforehand, as one batch of the same size. Overhead = node
seconds per request / anchor seconds per batch - 1. A second anchor also decodes and
resizes the PNGs in-process (Pillow) before the same call, so the overhead over it is
what HTTP, JSON, base64 and the micro-batcher add.

Prints Markdown tables of medians over ``--repeats`` (ratio = anchor seconds / seconds).

Usage: ``.venv/bin/python bench/objects.py [--slices 512] [--size 512] [--repeats 3] [--stores s3 gcs azure]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.progress import bar
from dicom_node.synthetic import SeriesSpec, write_ct_series

PREFIX = "bench/series"
FIXTURES = {"s3": "s3_server", "gcs": "gcs_emulator", "azure": "azurite"}
LABELS = {"s3": "S3 (moto server)", "gcs": "GCS (fake-gcs-server)", "azure": "Azure Blob (Azurite)"}
EMBEDDING_MODEL = "demo-image-embedding"


class _TmpFactory:
    """What the ``azurite`` fixture asks of pytest's ``tmp_path_factory``: ``mktemp(name)``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.base))
        return path


@contextlib.contextmanager
def emulator(store: str, work: Path) -> Iterator[Any]:
    """Start one emulator with the tests' own fixture code (``tests/objects_peers.py``) and yield its ObjectPeer."""
    import tests.objects_peers as peers

    fixture = getattr(peers, FIXTURES[store]).__wrapped__  # the fixture's generator function itself
    args = (_TmpFactory(work),) if store == "azure" else ()
    with contextlib.contextmanager(fixture)(*args) as peer:
        yield peer


def upload(peer: Any, files: list[Path]) -> None:
    """Put every file under ``inputs/<PREFIX>/`` through the emulator's own API (not timed)."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: peer.seed(f"{PREFIX}/{f.name}", f.read_bytes()), files))


def run_anchor(peer: Any, out: Path, expected: int, concurrency: int) -> float:
    """Anchor: obstore list + ``get_async`` of every object, ``concurrency`` at once, each to a file."""
    import obstore

    from dicom_node.objects import ObjectUrl
    from dicom_node.objects.backends import build_store

    prefix = ObjectUrl(peer.scheme, "inputs", PREFIX)
    store = build_store(peer.config, prefix)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    async def fetch_all() -> int:
        keys = [m["path"] for batch in obstore.list(store, prefix=PREFIX) for m in batch]
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> None:
            async with gate:
                result = await obstore.get_async(store, key)
                data = await result.bytes_async()
            (out / key.rpartition("/")[2]).write_bytes(bytes(data))

        await asyncio.gather(*(one(k) for k in keys))
        return len(keys)

    start = time.perf_counter()
    got = asyncio.run(fetch_all())
    seconds = time.perf_counter() - start
    if got != expected or len(list(out.iterdir())) != expected:
        raise RuntimeError(f"obstore fetched {got}/{expected}")
    return seconds


def run_node(peer: Any, root: Path, expected: int, concurrency: int, fsync: bool = True) -> float:
    """The node: one timed poll cycle of a bucket poller into a fresh storage root (durable unless ``fsync`` is off)."""
    from dicom_node.config import NodeConfig
    from dicom_node.node import Node
    from dicom_node.sources.poller import PollerService

    shutil.rmtree(root, ignore_errors=True)
    entry = {"name": "bench", "kind": "object", "url": f"{peer.scheme}://inputs/{PREFIX}", "enabled": False,
             "settle": 0.0, "concurrency": concurrency}
    config = NodeConfig.model_validate({
        "scp": {"port": 0}, "api": {"enabled": False}, "jobs": {"workers": 0},
        "storage": {"root": str(root), "min_free_bytes": 0, "fsync": fsync}, "sources": {"pollers": [entry]},
        "objects": peer.section,
    })
    node = Node(config)
    node.start()
    try:
        service = PollerService(node, objects=node.objects)
        poller = node.config.sources.poller("bench")
        start = time.perf_counter()
        report = service.run_cycle("bench", poller=poller)
        seconds = time.perf_counter() - start
    finally:
        node.stop()
    if not report.ok or report.retrieved != expected:
        raise RuntimeError(f"bucket poller brought {report.retrieved}/{expected}: {report.error}")
    return seconds


def run_ingest_floor(files: list[Path], root: Path, concurrency: int) -> float:
    """The node's own ingest of the same bytes, already in memory: what no bucket source can beat."""
    from dicom_node.config import NodeConfig
    from dicom_node.node import Node
    from dicom_node.sources.sink import RetrievalSink

    shutil.rmtree(root, ignore_errors=True)
    datas = [f.read_bytes() for f in files]
    config = NodeConfig.model_validate({"scp": {"port": 0}, "api": {"enabled": False}, "jobs": {"workers": 0},
                                        "storage": {"root": str(root), "min_free_bytes": 0}})
    node = Node(config)
    node.start()
    try:
        start = time.perf_counter()
        with RetrievalSink(node, "bench", "object:bench") as sink, ThreadPoolExecutor(concurrency) as pool:
            stored = list(pool.map(sink.store_part10, datas))
        seconds = time.perf_counter() - start
    finally:
        node.stop()
    if sum(1 for s in stored if s.status == 0) != len(files):
        raise RuntimeError("the ingest refused some of the series")
    return seconds


def bucket_reads(args: argparse.Namespace, files: list[Path]) -> list[str]:
    """(a): every store, anchor and node interleaved; returns the table lines."""
    n, total_mb = len(files), sum(f.stat().st_size for f in files) / 1e6
    rows = [f"{n} instances, {total_mb:.0f} MB, {args.repeats} repeats, medians; emulators on loopback", "",
            "| store | method | seconds | instances/s | MB/s | ratio to anchor |", "|---|---|---:|---:|---:|---:|"]
    widths = sorted({4, args.node_concurrency})
    for store in args.stores:
        with emulator(store, args.work) as peer:
            upload(peer, files)
            runs: dict[str, Callable[[], float]] = {
                f"obstore get_async x{args.anchor_concurrency} -> files (no fsync)":
                    lambda: run_anchor(peer, args.work / "anchor-out", n, args.anchor_concurrency),
            }
            for width in widths:
                runs[f"dicom-node bucket poller, concurrency {width} (durable spool)"] = (
                    lambda w=width: run_node(peer, args.work / "node", n, w))  # type: ignore[misc]
            # The anchor writes without fsync; this row is the node held to the same (storage.fsync = false).
            runs[f"dicom-node bucket poller, concurrency {widths[-1]}, storage.fsync = false"] = (
                lambda: run_node(peer, args.work / "node", n, widths[-1], fsync=False))
            times: dict[str, list[float]] = {name: [] for name in runs}
            with bar(args.repeats * len(runs), desc=f"objects {store}", unit="run") as shown:
                for _ in range(args.repeats):
                    for name, run in runs.items():  # interleaved, so drift hits every method alike
                        times[name].append(run())
                        shown.update(1)
            if store == args.stores[0]:  # no network: the same for every store, measured once, interleaved
                floor_name = f"dicom-node ingest alone, same bytes from memory, concurrency {widths[-1]} (durable)"
                floor = [run_ingest_floor(files, args.work / "node", widths[-1]) for _ in range(args.repeats)]
        anchor = statistics.median(next(iter(times.values())))
        for name, values in times.items():
            med = statistics.median(values)
            rows.append(f"| {LABELS[store]} | {name} | {med:.2f} | {n / med:.0f} | {total_mb / med:.0f} | "
                        f"{anchor / med:.2f}x |")
    med = statistics.median(floor)
    rows += ["", f"{floor_name}: {med:.2f} s, {n / med:.0f} instances/s (the bound on any pull into the spool)"]
    return rows


# -- (b) Vertex predict ---------------------------------------------------------------------------------------------


def _pngs(count: int) -> list[bytes]:
    """``count`` different 256x256 8-bit grayscale PNGs."""
    from PIL import Image

    rng = np.random.default_rng(16)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _anchor_batch(pngs: list[bytes]) -> np.ndarray:
    """The model's input for ``pngs``, prepared outside the timing: 224x224, (x - 127.5) / 127.5 (its model.toml)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(io.BytesIO(p)).convert("L").resize((224, 224), Image.BILINEAR), np.float32)
              for p in pngs]
    return ((np.stack(arrays)[:, None] - 127.5) / 127.5).astype(np.float32)


def vertex_predict(args: argparse.Namespace) -> list[str]:
    """(b): node requests vs bare ``InferenceSession.run`` per micro-batch size; returns the table lines."""
    import httpx
    import onnxruntime as ort

    from dicom_node.api.server import ApiFrontend
    from dicom_node.config import NodeConfig
    from dicom_node.node import Node

    engines = ROOT / "engines"
    if not (engines / EMBEDDING_MODEL / "model.toml").is_file():
        return [f"(b) skipped: {EMBEDDING_MODEL} is not in engines/"]
    root = args.work / "vertex-node"
    shutil.rmtree(root, ignore_errors=True)
    config = NodeConfig.model_validate({
        "scp": {"port": 0}, "api": {"port": 0, "max_body_bytes": 64 * 1024 * 1024},
        "storage": {"root": str(root), "min_free_bytes": 0, "fsync": False},
        "inference": {"models_dir": str(engines), "backends": ["onnxruntime"]},
    })
    node = Node(config, frontend=ApiFrontend)
    node.start()
    rows = [f"{EMBEDDING_MODEL} (DEMO weights) on ONNX Runtime CPU, 256x256 PNG inputs, one client, "
            f"{args.requests} requests per size, medians", "",
            "| micro-batch | node req/s | node instances/s | node ms/request | ORT session.run ms/batch | overhead "
            "| decode + resize + session.run ms | overhead over that |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    try:
        assert node.api is not None
        url = f"http://127.0.0.1:{node.api.port}/v1/projects/p/locations/l/endpoints/{EMBEDDING_MODEL}:predict"
        entry = node.models.predictor(EMBEDDING_MODEL).entry
        session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
        name = entry.spec.tensors.inputs[0].name
        with httpx.Client(timeout=300) as http:
            for size in args.batches:
                pngs = _pngs(size)
                # Encoded once, outside the timing: the client shares this process (and its GIL) with the
                # node, and json.dumps of a 2.8 MB body (32 images) was timed as the node's overhead.
                body = json.dumps({"instances": [{"input_bytes": base64.b64encode(p).decode()} for p in pngs]}).encode()
                feed = {name: _anchor_batch(pngs)}
                node_times, ort_times, full_times = [], [], []
                for i in range(args.requests + 1):  # the first of each is a warm-up
                    t0 = time.perf_counter()
                    answer = http.post(url, content=body, headers={"Content-Type": "application/json"})
                    t1 = time.perf_counter()
                    session.run(None, feed)
                    t2 = time.perf_counter()
                    session.run(None, {name: _anchor_batch(pngs)})  # the images decoded and resized, in-process
                    full_times.append(time.perf_counter() - t2)
                    predictions = answer.json().get("predictions", []) if answer.status_code == 200 else []
                    if len(predictions) != size or any("error" in p for p in predictions):
                        raise RuntimeError(f"predict failed: HTTP {answer.status_code} {answer.text[:300]}")
                    if i:
                        node_times.append(t1 - t0)
                        ort_times.append(t2 - t1)
                node_s, ort_s = statistics.median(node_times), statistics.median(ort_times)
                full_s = statistics.median(full_times[1:])
                rows.append(f"| {size} | {1 / node_s:.1f} | {size / node_s:.1f} | {1000 * node_s:.1f} | "
                            f"{1000 * ort_s:.1f} | {100 * (node_s / ort_s - 1):+.0f}% | {1000 * full_s:.1f} | "
                            f"{100 * (node_s / full_s - 1):+.0f}% |")
    finally:
        node.stop()
    return rows


def main() -> int:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=512, help="rows = columns")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stores", nargs="+", choices=sorted(FIXTURES), default=["s3", "gcs", "azure"])
    ap.add_argument("--anchor-concurrency", type=int, default=16)
    ap.add_argument("--node-concurrency", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="instances per predict request")
    ap.add_argument("--requests", type=int, default=20, help="predict requests per micro-batch size")
    ap.add_argument("--skip", choices=["reads", "predict"], default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.skip != "reads":
        series = args.work / f"ct-{args.slices}x{args.size}"
        if not series.is_dir() or len(list(series.glob("*.dcm"))) != args.slices:
            shutil.rmtree(series, ignore_errors=True)
            write_ct_series(series, SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed="bench"))
        print("\n" + "\n".join(bucket_reads(args, sorted(series.glob("*.dcm")))))
    if args.skip != "predict":
        print("\n" + "\n".join(vertex_predict(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
