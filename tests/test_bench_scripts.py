"""The benchmark scripts still run against today's code, in their smallest configuration.

A benchmark that only runs when someone measures rots silently (``bench/api.py``
once broke when the node's front end became a factory). Each script runs here on
a few instances, against the same real peers it uses for measuring (DCMTK,
Orthanc), and must print its Markdown table. No timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "ingest": ["--slices", "4", "--size", "64", "--repeats", "1", "--assocs", "1"],
    "api": ["--requests", "2", "--clients", "1"],
    "results": ["--slices", "4", "--e2e-slices", "4", "--repeats", "1", "--quiet-period", "0.5"],
    "pull": ["--slices", "4", "--size", "64", "--repeats", "1"],
    "dicomweb": ["--studies", "50", "--slices", "8", "--size", "64", "--repeats", "2", "--requests", "20"],
    "fuzz": ["--cases", "200"],
    "soak": ["--duration", "10", "--slices", "2", "--store-interval", "4", "--invoke-interval", "3"],
    "objects": ["--slices", "4", "--size", "64", "--repeats", "1", "--requests", "2", "--batches", "1", "4"],
    "cluster": ["--series", "4", "--slices", "2", "--size", "64", "--repeats", "1", "--nodes", "1", "2",
                "--s3-nodes", "1", "--pgbench-seconds", "1", "--idle", "0.5", "--settle", "0.2"],
}
PEERS = {"ingest": ("storescu", "storescp"), "results": ("storescu",), "pull": ("getscu", "Orthanc"),
         "dicomweb": ("storescu", "Orthanc"), "cluster": ("storescu",)}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_prints_its_table(script: str, tmp_path: Path) -> None:
    for tool in PEERS.get(script, ()):
        require_tool(tool)
    if script == "cluster":  # a throwaway PostgreSQL 15 cluster (tests/peers/postgres.py), as tests/pg_peer.py
        from tests.peers.postgres import PG_BIN

        require_tool(str(PG_BIN / "initdb"), "apt-get install postgresql-15")
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:  # skips, or fails under DICOM_NODE_REQUIRE_PEERS=1
            require_tool("psycopg (the Python package)", "pip install -e '.[postgresql]'")
    extra = ["--work", str(tmp_path)] if script != "api" else []
    if script == "objects":  # the emulators this machine has (tests/objects_peers.py)
        extra += ["--stores", *_object_stores()]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *CASES[script], *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, run.stdout


def _object_stores() -> list[str]:
    """The object storage emulators installed here; none skips (or fails under DICOM_NODE_REQUIRE_PEERS=1)."""
    import importlib.util

    from tests.objects_peers import azurite_binary, gcs_binary

    found = [name for name, present in (("s3", importlib.util.find_spec("moto") is not None),
                                         ("gcs", gcs_binary() is not None), ("azure", azurite_binary() is not None))
             if present]
    if not found:
        require_tool("an object storage emulator (moto, fake-gcs-server, Azurite)",
                     "pip install -e '.[test]'; tests/peers/install_object_peers.sh")
    return found
