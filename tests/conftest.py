"""Shared fixtures: nodes on ephemeral ports, synthetic series, peer requirements.

Tests that need an external peer (DCMTK, dciodvfy, Orthanc, Triton) call
:func:`require_tool`; it skips with the reason, or fails when
``DICOM_NODE_REQUIRE_PEERS=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dicom_node.api.server import ApiFrontend
from dicom_node.config import NodeConfig
from dicom_node.index import Index
from dicom_node.node import INDEX_NAME, Node
from dicom_node.synthetic import SeriesSpec, write_ct_series
from tests.peers.ports import free_port as free_port  # re-exported: tests import it from here
from tests.peers.ports import wait_port as wait_port

REPO = Path(__file__).resolve().parents[1]
#: Object storage emulators as session fixtures: azurite, gcs_emulator, s3_server (tests/objects_peers.py);
#: a throwaway PostgreSQL cluster: postgres_server, postgres_dsn, index_location (tests/pg_peer.py).
pytest_plugins = ["tests.objects_peers", "tests.pg_peer"]


def peers_required() -> bool:
    """True when a missing peer must fail the run instead of skipping."""
    return os.environ.get("DICOM_NODE_REQUIRE_PEERS") == "1"


def require_tool(name: str, hint: str = "") -> str:
    """Return the path of executable ``name`` or skip/fail with the reason."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed{': ' + hint if hint else ''}"
        if peers_required():
            pytest.fail(f"required peer missing: {reason}")
        pytest.skip(reason)
    return path


def node_config(root: Path, **sections: dict[str, Any]) -> NodeConfig:
    """A config rooted at ``root`` on an ephemeral port with short assembly waits."""
    data: dict[str, dict[str, Any]] = {
        "scp": {"port": 0},
        "api": {"port": 0},
        "storage": {"root": str(root), "min_free_bytes": 0},
        "assembly": {"quiet_period": 0.5, "poll_interval": 0.1, "abort_grace": 3600.0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    if "database" not in data["storage"]:
        data["storage"]["database"] = node_database(root)
    return NodeConfig.model_validate(data)


def node_database(root: Path) -> str | None:
    """The ``storage.database`` the tests give a node rooted at ``root``: None (SQLite) unless the
    tests run on PostgreSQL (``DICOM_NODE_TEST_POSTGRES``), then that root's database."""
    server = os.environ.get("DICOM_NODE_TEST_POSTGRES")
    return postgres_database_for(server, root) if server else None


def storage_env(root: Path) -> dict[str, str]:
    """The environment that points a ``dicom-node`` command at the node rooted at ``root`` (its
    storage root, and its database when the tests run on PostgreSQL)."""
    database = node_database(root)
    return {"DICOM_NODE__STORAGE__ROOT": str(root), **({"DICOM_NODE__STORAGE__DATABASE": database} if database else {})}


def shared_spool() -> bool:
    """True when the tests' nodes run on PostgreSQL, where a node treats its spool as shared with other
    nodes: its start-up scan spares files younger than ``dicom_node.node.SHARED_SPOOL_GRACE`` (another
    node may be writing them) instead of removing every leftover of a crash at once."""
    return bool(os.environ.get("DICOM_NODE_TEST_POSTGRES"))


def database_toml(root: Path) -> str:
    """The ``[storage]`` line of a config file for the node rooted at ``root`` on the tests' backend:
    ``database = "..."`` on PostgreSQL, nothing on SQLite."""
    database = node_database(root)
    return f'database = "{database}"\n' if database else ""


@contextmanager
def node_index(root: Path) -> Iterator[Index]:
    """The index of the node rooted at ``root``, on whichever backend the tests run it (see
    :func:`node_database`), for a test to read what a node stored: ``index.reader()`` gives a
    connection on either backend (dicom_node/index/pg.py translates the SQLite dialect)."""
    index = Index(node_database(root) or root / INDEX_NAME)
    try:
        yield index
    finally:
        index.close()


def postgres_database_for(server: str, root: Path) -> str:
    """The database on ``server`` of the storage root ``root`` (created empty the first time).

    With ``DICOM_NODE_TEST_POSTGRES=<maintenance dsn>`` every node the tests configure keeps its index
    on PostgreSQL: the suite against that backend, opt-in (tests/pg_peer.py has the fixtures). One
    database per root, so a test that restarts a node on the same root finds its rows again.
    """
    import hashlib

    import psycopg

    name = "n_" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:20]
    with psycopg.connect(server, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes (stopped at teardown); keyword args are config sections."""
    nodes: list[Node] = []

    def _start(root: Path | None = None, **sections: dict[str, Any]) -> Node:
        node = Node(node_config(root or tmp_path / "node", **sections), frontend=ApiFrontend)
        node.start()
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small synthetic CT series (12 slices of 64x64) as Part 10 files."""
    return write_ct_series(tmp_path_factory.mktemp("ct"), SeriesSpec(slices=12, rows=64, columns=64, seed="fixture"))


def dicom_node_exe() -> str:
    """The installed ``dicom-node`` script next to this interpreter."""
    return str(Path(sys.executable).with_name("dicom-node"))


class ServeProcess:
    """``dicom-node serve`` in a subprocess (for kill -9 and CLI tests)."""

    def __init__(self, root: Path, port: int, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = port
        # On the tests' backend, as node_config puts in-process nodes (storage_env); extra_env may override.
        self.env = dict(
            os.environ,
            **storage_env(root),
            DICOM_NODE__SCP__PORT=str(port),
            DICOM_NODE__API__PORT="0",
            DICOM_NODE__STORAGE__MIN_FREE_BYTES="0",
        )
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        # stderr goes to a file, not a pipe: nobody reads a pipe while the node runs, and a node that
        # logs more than the pipe's 64 KiB would block on its next write and look hung.
        self.stderr_path = root.parent / f"serve-{port}.stderr"

    def start(self) -> ServeProcess:
        """Start and wait until the SCP accepts connections."""
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [dicom_node_exe(), "serve"], env=self.env, cwd=self.root.parent,
                stdout=subprocess.DEVNULL, stderr=err,
            )
        wait_port(self.port)
        return self

    def status(self) -> dict[str, int]:
        """``dicom-node status --json`` against the same storage root."""
        import json

        out = subprocess.run(
            [dicom_node_exe(), "status", "--json"], env=self.env, cwd=self.root.parent,
            capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout)

    def stop(self, sig: int = 15) -> bytes:
        """Send ``sig`` and wait; returns what the node wrote to stderr since it was created."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        return self.stderr_path.read_bytes()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
