"""A throwaway PostgreSQL 15 cluster per test session (Debian's binaries), as the ``postgres_dsn`` fixture.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with the socket in the
same directory, and a fresh database per test (``pg_database`` fixture), so tests never share rows.
PostgreSQL refuses to run as root; when the tests run as root the cluster runs as the ``postgres``
user the Debian package creates (or ``nobody``). Skips with the reason when the binaries or psycopg
are missing, fails under ``DICOM_NODE_REQUIRE_PEERS=1`` (as :func:`tests.conftest.require_tool`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import peers_required
from tests.peers.postgres import PostgresUnavailable, postgres_cluster


def _unavailable(reason: str) -> None:
    if peers_required():
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The DSN of the session's cluster's maintenance database (superuser ``dicom_node``, no password)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg not installed (pip install -e '.[postgresql]')")
    # The cluster itself starts in tests/peers/postgres.py, which bench/cluster.py shares.
    try:
        with postgres_cluster() as pg:
            yield pg.dsn
    except PostgresUnavailable as exc:  # raised only while starting, before the yield
        _unavailable(str(exc))


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
