"""A throwaway PostgreSQL 15 cluster per test session (Debian's binaries), as the ``postgres_dsn`` fixture.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with the socket in the
same directory, and a fresh database per test (``pg_database`` fixture), so tests never share rows.
PostgreSQL refuses to run as root; when the tests run as root the cluster runs as the ``postgres``
user the Debian package creates (or ``nobody``). Skips with the reason when the binaries or psycopg
are missing, fails under ``DICOM_NODE_REQUIRE_PEERS=1`` (as :func:`tests.conftest.require_tool`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, peers_required

PG_BIN = Path(os.environ.get("DICOM_NODE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _unavailable(reason: str) -> None:
    if peers_required():
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


def _run_as() -> list[str]:
    """The command prefix that drops root (PostgreSQL will not start as root)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    _unavailable("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")
    return []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The DSN of the session's cluster's maintenance database (superuser ``dicom_node``, no password)."""
    if not (PG_BIN / "initdb").exists():
        _unavailable(f"PostgreSQL 15 not installed (no {PG_BIN}/initdb; apt-get install postgresql-15)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg not installed (pip install -e '.[postgresql]')")
    base = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    prefix = _run_as()
    if prefix:
        shutil.chown(base, user=prefix[2])
    data, port = base / "data", free_port()
    subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", "dicom_node", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts,
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://dicom_node@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: str) -> str:
    """A new, empty database on the session's cluster (one per test, so tests never see each other's rows)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def index_location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's index lives, once per backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "index.sqlite3"
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """The ``[storage]`` keys of a node, once per backend: none (SQLite), then ``database`` (PostgreSQL)."""
    if request.param == "sqlite":
        return {}
    return {"database": str(request.getfixturevalue("postgres_dsn"))}
