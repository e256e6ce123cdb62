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
}
PEERS = {"ingest": ("storescu", "storescp"), "results": ("storescu",), "pull": ("getscu", "Orthanc"),
         "dicomweb": ("storescu", "Orthanc")}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_prints_its_table(script: str, tmp_path: Path) -> None:
    for tool in PEERS.get(script, ()):
        require_tool(tool)
    extra = ["--work", str(tmp_path)] if script != "api" else []
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *CASES[script], *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, run.stdout
