"""Helpers the benchmark scripts share: ports, process CPU, percentiles, the environment of a child node.

Each was copied between scripts before (``free_port`` five times); one copy here keeps them alike, and
the ports helpers are the tests' own (tests/peers/ports.py).
Scripts put the checkout on ``sys.path`` and import ``bench.common``; nothing here imports the node.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.peers.ports import free_port as free_port  # the tests' own, re-exported for the scripts
from tests.peers.ports import wait_port as wait_port

#: The checkout the benchmarks measure.
ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc (proc(5), fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH``, plus ``extra``.

    A node started as ``python -m dicom_node serve`` with it runs the code beside the script, not an
    installed copy.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}
