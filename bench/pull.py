"""Pull benchmark: retrieving a CT study from Orthanc by C-GET and by WADO-RS, beside their anchors.

Generates a synthetic CT series (default 512 slices of 512x512, 16-bit,
Explicit VR Little Endian), loads it into a fresh Orthanc 1.10 (DICOMweb plugin
1.7, MaximumPduLength 131072) through its REST API, then times, in the same
run and interleaved, over loopback:

- (a) DCMTK ``getscu`` (Study Root C-GET, ``--max-pdu 131072``, TCP_NODELAY=1),
  writing files to a folder without fsync: the anchor for C-GET;
- (b) a plain dicomweb-client ``retrieve_study`` call (WADO-RS, multipart parsed
  into pydicom datasets in memory, nothing written): the anchor for WADO-RS;
- (c) the node's poller path: one poll cycle of a ``kind = "dicomweb"`` poller
  (QIDO-RS for studies and series, WADO-RS streamed part by part into the durable
  spool: each instance fsynced and indexed before the next counts);
- (d) the node's C-GET: :class:`~dicom_node.sources.dimse.DimseSource` retrieving
  the study into the same durable spool.

Each node run starts from an empty storage root. Prints a Markdown table of
medians over ``--repeats`` with the speed ratio to the anchor (anchor seconds
divided by seconds: 0.50x means half as fast).

Usage: ``.venv/bin/python bench/pull.py [--slices 512] [--size 512] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.progress import bar
from dicom_node.synthetic import SeriesSpec, write_ct_series

ORTHANC_AET = "ORTHANC"
NODE_AET = "DICOM_NODE"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load_orthanc(http_url: str, files: list[Path]) -> None:
    """POST every file to Orthanc's REST API (``/instances``)."""
    for path in files:
        request = urllib.request.Request(http_url + "/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with _OPENER.open(request, timeout=60) as response:
            if response.status != 200:
                raise RuntimeError(f"Orthanc refused {path.name}: HTTP {response.status}")


def run_getscu(port: int, study: str, work: Path, expected: int) -> float:
    """(a) One timed ``getscu`` of the study into a fresh folder."""
    out = work / "getscu-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = ["getscu", "-S", "-aec", ORTHANC_AET, "--max-pdu", "131072", "-od", str(out),
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    got = len(list(out.iterdir()))
    if proc.returncode != 0 or got != expected:
        raise RuntimeError(f"getscu brought {got}/{expected} (rc {proc.returncode}): {proc.stderr[-500:]}")
    return seconds


def run_dicomweb_client(url: str, study: str, expected: int) -> float:
    """(b) One timed ``DICOMwebClient.retrieve_study`` (datasets parsed in memory)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.trust_env = False  # loopback: no proxy from the environment
    client = DICOMwebClient(url=url, session=session, timeout=600)
    start = time.perf_counter()
    datasets = client.retrieve_study(study)
    seconds = time.perf_counter() - start
    if len(datasets) != expected:
        raise RuntimeError(f"dicomweb-client brought {len(datasets)}/{expected}")
    return seconds


def _node(root: Path, sources: dict[str, Any]) -> Any:
    """A started in-process node on a fresh storage root (SCP on an ephemeral port, no API, no workers)."""
    from dicom_node.config import NodeConfig
    from dicom_node.node import Node

    shutil.rmtree(root, ignore_errors=True)
    config = NodeConfig.model_validate({
        "scp": {"port": 0, "ae_title": NODE_AET}, "api": {"enabled": False}, "jobs": {"workers": 0},
        "storage": {"root": str(root), "min_free_bytes": 0}, "sources": sources,
    })
    node = Node(config)
    node.start()
    return node


def run_poller(url: str, work: Path, expected: int) -> float:
    """(c) One timed poll cycle of a DICOMweb poller (QIDO-RS + WADO-RS into the durable spool)."""
    from dicom_node.sources.poller import PollerService

    # Disabled, so the node does not start polling on its own; run_cycle polls it once, timed.
    entry = {"name": "bench", "kind": "dicomweb", "url": url, "enabled": False, "timeout": 600.0}
    node = _node(work / "node-poller", {"pollers": [entry]})
    try:
        service = PollerService(node)
        poller = node.config.sources.poller("bench")
        start = time.perf_counter()
        report = service.run_cycle("bench", poller=poller)
        seconds = time.perf_counter() - start
    finally:
        node.stop()
    if not report.ok or report.retrieved != expected:
        raise RuntimeError(f"poller brought {report.retrieved}/{expected}: {report.error}")
    return seconds


def run_cget(port: int, study: str, work: Path, expected: int) -> float:
    """(d) One timed C-GET of the study by DimseSource into the durable spool."""
    from dicom_node.sources.dimse import DimseSource

    remote = {"name": "orthanc", "ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": port,
              "retrieve": "c-get", "dimse_timeout": 600.0}
    node = _node(work / "node-cget", {"remotes": [remote]})
    try:
        source = DimseSource(node.config.sources.remote("orthanc"), node)
        start = time.perf_counter()
        with source.sink() as sink:
            result = source.retrieve(study, None, sink)
        seconds = time.perf_counter() - start
    finally:
        node.stop()
    if len(result.stored) != expected or result.failed:
        raise RuntimeError(f"C-GET stored {len(result.stored)}/{expected}, failed {result.failed}")
    return seconds


def main() -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--size", type=int, default=512, help="rows = columns")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    from tests.peers.orthanc import find_dicomweb_plugin, find_orthanc, run_orthanc

    if shutil.which("getscu") is None or find_orthanc() is None or find_dicomweb_plugin() is None:
        print("needs DCMTK getscu and Orthanc with its DICOMweb plugin (apt-get install dcmtk orthanc "
              "orthanc-dicomweb)", file=sys.stderr)
        return 2
    series = args.work / f"ct-{args.slices}x{args.size}"
    if not series.is_dir() or len(list(series.glob("*.dcm"))) != args.slices:
        shutil.rmtree(series, ignore_errors=True)
        write_ct_series(series, SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed="bench"))
    files = sorted(series.glob("*.dcm"))
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    import pydicom

    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    n = len(files)
    folder = args.work / "orthanc"
    shutil.rmtree(folder, ignore_errors=True)
    extra = {"MaximumPduLength": 131072, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    with run_orthanc(folder, aet=ORTHANC_AET, extra=extra) as peer:
        load_orthanc(peer.http_url, files)
        runs: dict[str, Callable[[], float]] = {
            "DCMTK getscu (C-GET, files, no fsync)": lambda: run_getscu(peer.dicom_port, study, args.work, n),
            "dicom-node C-GET (DimseSource, durable spool)": lambda: run_cget(peer.dicom_port, study, args.work, n),
            "dicomweb-client retrieve_study (WADO-RS, in memory)":
                lambda: run_dicomweb_client(peer.dicomweb_url, study, n),
            "dicom-node poller (QIDO-RS + WADO-RS, durable spool)":
                lambda: run_poller(peer.dicomweb_url, args.work, n),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        with bar(args.repeats * len(runs), desc="pull", unit="run") as shown:
            for _ in range(args.repeats):
                # Interleave methods so drift in the machine's state hits all alike.
                for name, run in runs.items():
                    times[name].append(run())
                    shown.update(1)
    names = list(runs)
    anchors = {names[0]: names[0], names[1]: names[0], names[2]: names[2], names[3]: names[2]}
    print(f"\n{n} instances, {total_mb:.0f} MB, {args.repeats} repeats, medians; Orthanc 1.10 on loopback, "
          "MaximumPduLength 131072; getscu TCP_NODELAY=1 --max-pdu 131072\n")
    print("| method | seconds | instances/s | MB/s | anchor | ratio to anchor |")
    print("|---|---:|---:|---:|---|---:|")
    for name in names:
        med = statistics.median(times[name])
        anchor = statistics.median(times[anchors[name]])
        label = "-" if anchors[name] == name else anchors[name].split(" (")[0]
        print(f"| {name} | {med:.2f} | {n / med:.0f} | {total_mb / med:.0f} | {label} | {anchor / med:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
