"""DICOMweb benchmark: the node's QIDO-RS and WADO-RS beside Orthanc's DICOMweb plugin, same data, same run.

Loads the same files into a fresh ``dicom-node serve`` (child process, SQLite index, fsync on) and a
fresh Orthanc 1.10 with its DICOMweb plugin (default SQLite index and storage in a temporary folder,
the test helper's loopback config, TCP_NODELAY=1), both by DCMTK ``storescu`` over one association
per folder, and times over loopback with one keep-alive ``requests.Session`` per client, alternating
the two servers request by request so drift in the machine's load hits both alike:

1. QIDO-RS, the Search Transaction (PS3.18 10.6; query parameters PS3.18 8.3.4, answers as DICOM JSON,
   PS3.18 F.2), over ``--studies`` studies of one small instance each (8x8 pixels; varied Patient's
   Name, Patient ID, Study Date, Modality): a Patient ID exact match (one study), a one-month Study Date
   range, a ``DOE*`` Patient's Name wildcard and the first 25 studies (a viewer's study list), p50 and
   p95 over ``--requests`` requests each. Both servers must answer the same number of matches.
2. WADO-RS series metadata (PS3.18 10.4, Retrieve Transaction, metadata resources, DICOM JSON) of a
   synthetic CT of ``--slices`` slices of ``--size``\\ :sup:`2` 16-bit pixels: the first request after
   loading (server caches cold) and the median of the ``--repeats`` - 1 that follow (warm).
3. WADO-RS frames (PS3.18 10.4, frame resources; multipart/related, PS3.18 8.6 and 8.7.3): frame 1 of
   every instance of that series with ``Accept: multipart/related; type="application/octet-stream";
   transfer-syntax=*`` (as OHIF asks), frames per second with one client and with 4 concurrent clients.

Prints a Markdown table; ratios are speed ratios, Orthanc's time over the node's (above 1.00x: the node
is faster). Generated files are cached under ``--work``; servers start empty on every run.

Usage: ``.venv/bin/python bench/dicomweb.py [--studies 10000] [--slices 512] [--size 512] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.parser
import email.policy
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, MRImageStorage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import checkout_env, cpu_seconds, free_port  # noqa: E402
from dicom_node.progress import bar  # noqa: E402
from dicom_node.synthetic import SeriesSpec, ct_datasets, write_ct_series  # noqa: E402

ORTHANC_AET = "ORTHANC"
NODE_AET = "DICOM_NODE"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CLIENTS = 4
#: Bumped when the generated QIDO data changes, so a cached folder of an older layout is not reused.
DATA_VERSION = 1
LAST_NAMES = ("DOE", "SMITH", "JONES", "BROWN", "MILLER", "DAVIS", "GARCIA", "RODRIGUEZ", "WILSON", "MARTINEZ",
              "ANDERSON", "TAYLOR", "THOMAS", "HERNANDEZ", "MOORE", "MARTIN", "JACKSON", "THOMPSON", "WHITE", "LOPEZ",
              "LEE", "GONZALEZ", "HARRIS", "CLARK", "LEWIS", "ROBINSON", "WALKER", "PEREZ", "HALL", "YOUNG",
              "ALLEN", "SANCHEZ", "WRIGHT", "KING", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL")
FIRST_NAMES = ("JOHN", "JANE", "ALEX", "MARIA", "SAM", "LINDA", "OMAR", "MEI", "PAUL", "SARA", "IVAN", "NORA")
MODALITIES = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage}
FIRST_DATE = dt.date(2016, 1, 1)
DAYS = 3653  # ten years of study dates


# -- data --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """The searchable attributes of one generated study."""

    patient_name: str
    patient_id: str
    study_date: str
    modality: str


def study_attributes(i: int) -> Study:
    """Study ``i``'s attributes: names cycle through 40 surnames, dates spread over ten years."""
    date = FIRST_DATE + dt.timedelta(days=(i * 7919) % DAYS)
    name = f"{LAST_NAMES[i % len(LAST_NAMES)]}^{FIRST_NAMES[(i // len(LAST_NAMES)) % len(FIRST_NAMES)]}"
    return Study(name, f"PID{i:06d}", date.strftime("%Y%m%d"), tuple(MODALITIES)[i % len(MODALITIES)])


def write_qido_studies(folder: Path, n: int) -> list[Path]:
    """One 8x8 instance per study, ``n`` studies, cached in ``folder`` (rewritten when incomplete)."""
    stamp = folder.with_name(f"{folder.name}.complete-v{DATA_VERSION}")  # beside it: storescu sends the folder
    if stamp.exists():
        return sorted(folder.glob("*.dcm"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    with bar(n, desc="generate studies", unit="file") as shown:
        for i in range(n):
            attrs = study_attributes(i)
            ds = next(ct_datasets(SeriesSpec(slices=1, rows=8, columns=8, seed=f"qido-{i}", modality=attrs.modality)))
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MODALITIES[attrs.modality]
            ds.PatientName, ds.PatientID = attrs.patient_name, attrs.patient_id
            ds.StudyDate = attrs.study_date
            ds.StudyTime = f"{(i * 7) % 24:02d}{(i * 13) % 60:02d}00"
            ds.AccessionNumber = f"ACC{i:06d}"
            ds.StudyDescription = f"{attrs.modality} study {i % 17}"
            path = folder / f"s{i:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            shown.update(1)
    stamp.touch()
    return paths


def write_series(folder: Path, slices: int, size: int) -> list[Path]:
    """The CT series, cached (regenerated when the slice count differs)."""
    if not folder.is_dir() or len(list(folder.glob("*.dcm"))) != slices:
        shutil.rmtree(folder, ignore_errors=True)
        write_ct_series(folder, SeriesSpec(slices=slices, rows=size, columns=size, seed="dicomweb-bench"))
    return sorted(folder.glob("*.dcm"))


@dataclass(frozen=True)
class Query:
    """One QIDO-RS study search: a label, parameters per request number, the expected match count."""

    label: str
    params: Callable[[int], dict[str, str]]
    expected: int


def queries(n: int) -> list[Query]:
    """The searches timed, with the match counts the generated data implies."""
    studies = [study_attributes(i) for i in range(n)]
    month = studies[n // 2].study_date[:6]
    last = (dt.date(int(month[:4]), int(month[4:]), 28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    date_range = f"{month}01-{last:%Y%m%d}"
    return [
        Query(f"PatientID exact (1 of {n} studies)", lambda k: {"PatientID": studies[(k * 7919) % n].patient_id}, 1),
        Query(f"StudyDate range ({date_range})", lambda _k: {"StudyDate": date_range},
              sum(date_range[:8] <= s.study_date <= date_range[9:] for s in studies)),
        Query("PatientName wildcard DOE*", lambda _k: {"PatientName": "DOE*"},
              sum(s.patient_name.startswith("DOE^") for s in studies)),
        Query("all studies, limit=25 (study list)", lambda _k: {"limit": "25"}, min(25, n)),
    ]


# -- servers -----------------------------------------------------------------------------------------------------

def session() -> requests.Session:
    """A keep-alive session that ignores proxies and asks for bodies as they are (no gzip).

    requests sends ``Accept-Encoding: gzip, deflate`` by default, and Orthanc (HttpCompressionEnabled, on by
    default) then deflates every answer, 512 KB frames included, which costs far more CPU than loopback saves;
    the node does not compress. ``identity`` measures both servers' retrieval itself.
    """
    http = requests.Session()
    http.trust_env = False
    http.headers["Accept-Encoding"] = "identity"
    return http


def wait_idle(pid: int, timeout: float = 300.0) -> None:
    """Block until the process uses under 5% of a core over a second (background work after a load is done)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - last < 0.05:
            return
        last = now


def storescu(folder: Path, port: int, aet: str) -> float:
    """Send every file of ``folder`` over one association (TCP_NODELAY=1); wall seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = ["storescu", "-aec", aet, "--max-pdu", "131072", "+sd", "127.0.0.1", str(port), str(folder)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to {aet} failed (rc {proc.returncode}): {proc.stderr[-800:]}")
    return seconds


def node_config(work: Path, scp: int, api: int) -> Path:
    """A node config with no routing rules and no job workers: only storage and the DICOMweb facade."""
    conf = work / "node.toml"
    conf.write_text(
        f'[scp]\nport = {scp}\nae_title = "{NODE_AET}"\n[api]\nport = {api}\n'
        f'[storage]\nroot = "node-root"\nmin_free_bytes = 0\n[assembly]\nquiet_period = 1.0\n'
        f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n'
        '[jobs]\nworkers = 0\n[logging]\nlevel = "WARNING"\n', encoding="utf-8")
    return conf


@dataclass(frozen=True)
class Server:
    """One DICOMweb server under test."""

    name: str
    dicomweb: str
    dicom_port: int
    aet: str
    pid: int


@contextmanager
def run_node(work: Path) -> Iterator[Server]:
    """``dicom-node serve`` on a fresh storage root, as a child process running this checkout's code."""
    shutil.rmtree(work / "node-root", ignore_errors=True)
    scp, api = free_port(), free_port()
    conf = node_config(work, scp, api)
    with (work / "node.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(conf)], cwd=work,
                                stdout=log, stderr=log, env=checkout_env())
    base = f"http://127.0.0.1:{api}"
    try:
        http = session()
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start; see {work / 'node.log'}")
            try:
                if http.get(f"{base}/healthz", timeout=2).status_code == 200:
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", scp)) == 0:
                            break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield Server("dicom-node", f"{base}/dicomweb", scp, NODE_AET, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def run_orthanc_server(work: Path) -> Iterator[tuple[Server, str]]:
    """Orthanc with the DICOMweb plugin through the tests' helper; yields the server and its version line."""
    from tests.peers.orthanc import run_orthanc

    folder = work / "orthanc"
    shutil.rmtree(folder, ignore_errors=True)
    os.environ["TCP_NODELAY"] = "1"  # inherited by Orthanc: no 44 ms Nagle stalls on loopback
    with run_orthanc(folder, aet=ORTHANC_AET, extra={"MaximumPduLength": 131072}) as peer:
        core = peer.get("/system").get("Version", "?")
        plugin = peer.get("/plugins/dicom-web").get("Version", "?")
        pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and _cmdline(p).startswith(f"{shutil.which('Orthanc')}\0{folder}"))
        yield Server("Orthanc", peer.dicomweb_url, peer.dicom_port, ORTHANC_AET, pid), \
            f"Orthanc {core}, DICOMweb plugin {plugin}"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_text(errors="replace")
    except OSError:
        return ""


# -- measurements ------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def search(http: requests.Session, server: Server, params: Mapping[str, str]) -> tuple[float, int]:
    """One timed study search: seconds and the number of studies answered."""
    start = time.perf_counter()
    # '*' left unescaped, as JavaScript's encodeURIComponent (OHIF) sends it: Orthanc 1.10 takes %2A literally.
    query = urllib.parse.urlencode(params, safe="*")
    r = http.get(f"{server.dicomweb}/studies?{query}", headers={"Accept": "application/dicom+json"}, timeout=60)
    seconds = time.perf_counter() - start
    if r.status_code == 204:
        return seconds, 0
    if r.status_code != 200:
        raise RuntimeError(f"{server.name} QIDO {dict(params)}: HTTP {r.status_code} {r.text[:300]}")
    return seconds, len(r.json())


def time_queries(servers: list[Server], n: int, requests_per_query: int) -> dict[str, dict[str, list[float]]]:
    """Per query label and server name: seconds of each request (counts checked against the data first)."""
    sessions = {s.name: session() for s in servers}
    out: dict[str, dict[str, list[float]]] = {}
    plan = queries(n)
    with bar(len(plan) * requests_per_query, desc="QIDO-RS", unit="round") as shown:
        for query in plan:
            for server in servers:  # correctness and warm-up: same answer from both before any timing
                for k in range(3):
                    _, got = search(sessions[server.name], server, query.params(k))
                    if got != query.expected:
                        raise RuntimeError(f"{server.name} answered {got} studies to {query.label}, "
                                           f"expected {query.expected}")
            times: dict[str, list[float]] = {s.name: [] for s in servers}
            for k in range(requests_per_query):
                for server in servers if k % 2 == 0 else servers[::-1]:
                    seconds, got = search(sessions[server.name], server, query.params(k))
                    if got != query.expected:
                        raise RuntimeError(f"{server.name}: {got} matches to {query.label}")
                    times[server.name].append(seconds)
                shown.update(1)
            out[query.label] = times
    return out


def series_metadata(http: requests.Session, server: Server, study: str, series: str, expected: int) -> float:
    """One timed series metadata request (the JSON parsed, as a viewer does)."""
    start = time.perf_counter()
    r = http.get(f"{server.dicomweb}/studies/{study}/series/{series}/metadata",
                 headers={"Accept": "application/dicom+json"}, timeout=600)
    body = r.json() if r.status_code == 200 else None
    seconds = time.perf_counter() - start
    if not isinstance(body, list) or len(body) != expected:
        raise RuntimeError(f"{server.name} metadata: HTTP {r.status_code}, "
                           f"{len(body) if isinstance(body, list) else 'no'} instances of {expected}")
    return seconds


def frame_url(server: Server, study: str, series: str, sop: str) -> str:
    """The URL of frame 1 of an instance."""
    return f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/1"


def get_frame(http: requests.Session, url: str, min_bytes: int) -> bytes:
    """One frame request; the whole multipart body."""
    r = http.get(url, headers={"Accept": FRAME_ACCEPT}, timeout=60)
    if r.status_code != 200 or len(r.content) < min_bytes:
        raise RuntimeError(f"frame {url}: HTTP {r.status_code}, {len(r.content)} bytes")
    return r.content


def only_part(body: bytes, content_type: str) -> bytes:
    """The payload of a single-part multipart/related message."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = list(message.iter_parts())  # type: ignore[attr-defined]  # a multipart EmailMessage
    if len(parts) != 1:
        raise RuntimeError(f"expected one part, got {len(parts)}")
    payload = parts[0].get_payload(decode=True)
    return bytes(payload)


def check_frame(server: Server, url: str, expected: bytes) -> None:
    """The frame answered is the stored pixel data, byte for byte."""
    r = session().get(url, headers={"Accept": FRAME_ACCEPT}, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"{server.name} frame: HTTP {r.status_code} {r.text[:300]}")
    got = only_part(r.content, r.headers["Content-Type"])
    if got != expected:
        raise RuntimeError(f"{server.name} answered a frame of {len(got)} bytes that differs from the stored "
                           f"{len(expected)}")


def frames_pass(urls: list[str], clients: int, min_bytes: int) -> float:
    """Wall seconds to fetch every URL, split over ``clients`` threads with a session each."""
    groups = [urls[i::clients] for i in range(clients)]
    errors: list[BaseException] = []

    def client(group: list[str]) -> None:
        http = session()
        try:
            for url in group:
                get_frame(http, url, min_bytes)
        except BaseException as exc:  # reported after the pass
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(g,)) for g in groups]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"frame retrieval failed: {errors[0]}") from errors[0]
    return seconds


# -- report ------------------------------------------------------------------------------------------------------

def ms(value: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{value * 1000:.1f}"


def main() -> int:
    """Generate or reuse the data, start both servers, load them, time, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000, help="studies for QIDO-RS, one small instance each")
    ap.add_argument("--slices", type=int, default=512, help="instances of the CT series for metadata and frames")
    ap.add_argument("--size", type=int, default=512, help="rows = columns of the CT series")
    ap.add_argument("--repeats", type=int, default=5, help="metadata requests (the first cold) and frame passes")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per QIDO-RS query and server")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-node-bench-dicomweb")
    args = ap.parse_args()
    if args.repeats < 2 or args.studies < 1 or args.requests < 1:
        ap.error("--repeats must be at least 2 (one cold request, then warm ones); --studies, --requests at least 1")
    from tests.peers.orthanc import find_dicomweb_plugin, find_orthanc

    if shutil.which("storescu") is None or find_orthanc() is None or find_dicomweb_plugin() is None:
        print("needs DCMTK storescu and Orthanc with its DICOMweb plugin (apt-get install dcmtk orthanc "
              "orthanc-dicomweb)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    qido_dir = args.work / f"qido-{args.studies}"
    series_dir = args.work / f"ct-{args.slices}x{args.size}"
    write_qido_studies(qido_dir, args.studies)
    files = write_series(series_dir, args.slices, args.size)
    head = pydicom.dcmread(files[0])
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    frame_size = int(head.Rows) * int(head.Columns) * 2

    loads: dict[str, tuple[float, float]] = {}
    with run_node(args.work) as node, run_orthanc_server(args.work) as (orthanc, orthanc_version):
        servers = [node, orthanc]
        for server in servers:
            loads[server.name] = (storescu(qido_dir, server.dicom_port, server.aet),
                                  storescu(series_dir, server.dicom_port, server.aet))
            wait_idle(server.pid)
        qido_times = time_queries(servers, args.studies, args.requests)

        metadata: dict[str, list[float]] = {s.name: [] for s in servers}
        sessions = {s.name: session() for s in servers}
        with bar(args.repeats, desc="metadata", unit="round") as shown:
            for _ in range(args.repeats):
                for server in servers:
                    metadata[server.name].append(
                        series_metadata(sessions[server.name], server, study, series, len(files)))
                shown.update(1)

        urls = {s.name: [frame_url(s, study, series, sop) for sop in sops] for s in servers}
        for server in servers:
            check_frame(server, urls[server.name][0], bytes(head.PixelData))
        frames: dict[tuple[str, int], list[float]] = {(s.name, c): [] for s in servers for c in (1, CLIENTS)}
        with bar(args.repeats * 2 * len(servers), desc="frames", unit="pass") as shown:
            for _ in range(args.repeats):
                for clients in (1, CLIENTS):
                    for server in servers:
                        frames[(server.name, clients)].append(frames_pass(urls[server.name], clients, frame_size))
                        shown.update(1)

    series_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"\n{node.name} (this checkout, `dicom-node serve`, SQLite index, fsync on, no routing rules, no job "
          f"workers) vs {orthanc_version} (default SQLite index and storage in a fresh folder, loopback config of "
          "tests/peers/orthanc.py, MaximumPduLength 131072, TCP_NODELAY=1); both loaded by DCMTK storescu, one "
          "association per folder, over loopback.\n")
    print(f"QIDO-RS: {args.studies} studies of one 8x8 instance, {args.requests} requests per query and server "
          f"(interleaved), one keep-alive session each. Metadata and frames: {len(files)} CT instances of "
          f"{args.size}x{args.size} 16-bit ({series_mb:.0f} MB), {args.repeats} requests / passes each; frames "
          f"asked as `{FRAME_ACCEPT}`. Ratio = Orthanc's time / the node's (above 1.00x: the node is faster).\n")
    print(f"| measure | dicom-node | {orthanc_version} | ratio |")
    print("|---|---:|---:|---:|")
    for label, query in zip(qido_times, queries(args.studies), strict=True):
        a, b = qido_times[label][node.name], qido_times[label][orthanc.name]
        a50, a95, b50, b95 = percentile(a, 0.5), percentile(a, 0.95), percentile(b, 0.5), percentile(b, 0.95)
        print(f"| QIDO-RS {label}, {query.expected} match(es): p50 / p95 ms | {ms(a50)} / {ms(a95)} | "
              f"{ms(b50)} / {ms(b95)} | {b50 / a50:.2f}x / {b95 / a95:.2f}x |")
    a, b = metadata[node.name], metadata[orthanc.name]
    wa, wb = statistics.median(a[1:]), statistics.median(b[1:])
    print(f"| series metadata, {len(files)} instances, warm median s | {wa:.3f} | {wb:.3f} | {wb / wa:.2f}x |")
    print(f"| series metadata, first request after loading s | {a[0]:.3f} | {b[0]:.3f} | {b[0] / a[0]:.2f}x |")
    for clients in (1, CLIENTS):
        fa = len(files) / statistics.median(frames[(node.name, clients)])
        fb = len(files) / statistics.median(frames[(orthanc.name, clients)])
        label = "1 client" if clients == 1 else f"{clients} concurrent clients"
        print(f"| frames, {label}, frames/s (median pass) | {fa:.0f} | {fb:.0f} | {fa / fb:.2f}x |")
    (na, nb), (oa, ob) = loads[node.name], loads[orthanc.name]
    print(f"\nLoading (informational, storescu wall time): {args.studies} studies {na:.1f} s into the node, "
          f"{oa:.1f} s into Orthanc; the {len(files)}-instance CT {nb:.1f} s into the node, {ob:.1f} s into Orthanc.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
