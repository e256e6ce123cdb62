"""A throwaway PostgreSQL 15 cluster per test session (Debian's binaries), as the ``postgres_dsn`` fixture.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with the socket in the
same directory, and a fresh database per test (``pg_database`` fixture), so tests never share rows.
PostgreSQL refuses to run as root; when the tests run as root the cluster runs as the ``postgres``
user the Debian package creates (or ``nobody``). Skips with the reason when the binaries or psycopg
are missing, fails under ``DICOM_NODE_REQUIRE_PEERS=1`` (as :func:`tests.conftest.require_tool`).
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import peers_required
from tests.peers.postgres import PostgresUnavailable, postgres_cluster

#: ``DICOM_NODE_TEST_BACKEND=postgresql``: the run is the suite's PostgreSQL pass (``make test-postgresql``).
#: It starts the session's throwaway cluster, sets ``DICOM_NODE_TEST_POSTGRES`` to it (every node the tests
#: configure then keeps its index there, one database per storage root: tests/conftest.py node_database)
#: and keeps only the tests whose node stores something (:func:`touches_index`). The default run (SQLite)
#: runs everything, including the tests parametrised over both backends (``index_location``).
BACKEND = os.environ.get("DICOM_NODE_TEST_BACKEND", "sqlite")
#: Test modules the PostgreSQL pass leaves to the default run.
NOT_INDEX_TESTS = frozenset({
    # They start a node but test what happens before or around the index (protocol, TLS, SSRF and redirect
    # policy, the OpenAPI fuzzer, docs, deployment files, the viewer, the Triton farm).
    "test_api_docs.py", "test_api_schemathesis.py", "test_deploy_manifests.py", "test_inference_triton_farm.py",
    "test_ohif_viewer.py", "test_readme.py", "test_synthetic.py", "test_rel_pdu_fuzz.py", "test_rel_redirects.py",
    "test_rel_slowbody.py", "test_rel_ssrf.py", "test_rel_tls.py",
    # Predict and model administration: their nodes answer from the model and store nothing in the index.
    "test_aiaa_nifti_parity.py", "test_api_models.py", "test_api_png.py", "test_api_predict.py",
    "test_compat_aiaa_admin.py", "test_compat_aiaa_infer.py", "test_compat_vertex.py",
    # The CLI's config and storage-root resolution around the SQLite file, and the PHI check of its bytes.
    "test_cli.py", "test_rel_phi.py",
    # PostgreSQL's own tests: the default run has them on PostgreSQL already.
    "test_index_pg.py", "test_e2e_postgres.py",
})
#: What a test or one of its fixtures must mention to reach a node's index without the ``start_node``
#: fixture (a module-scoped node, a subprocess node, the index itself).
_INDEX_USES = ("node_config(", "ServeProcess(", "node_index(", "Index(", "IndexWriter(")
#: What marks a module whose tests drive ``dicom-node`` processes (through module helpers) on the tests' backend.
_PROCESS_USES = ("ServeProcess(", "storage_env(", "database_toml(")
_TEXTS: dict[Path, str] = {}


def touches_index(item: pytest.Item) -> bool:
    """True when ``item`` runs a node (or the index) whose stored state it checks, on the backend the
    tests configure: the PostgreSQL pass runs these, and not the tests that pick a backend themselves
    (parametrised over both, or on ``postgres_dsn``: the default run has them on PostgreSQL already)."""
    path = Path(str(item.fspath))
    if path.name in NOT_INDEX_TESTS:
        return False
    names = set(getattr(item, "fixturenames", ()))
    if names & {"index_location", "storage_backend", "postgres_dsn", "postgres_server"}:
        return False
    if "start_node" in names or any(use in _module_text(path) for use in _PROCESS_USES):
        return True
    # The test's own body and the fixtures it uses (a module-scoped node is built in its fixture).
    info = getattr(item, "_fixtureinfo", None)
    funcs = [getattr(item, "obj", None)] + [d.func for defs in (info.name2fixturedefs.values() if info else ())
                                             for d in defs]
    return any(use in _source(func) for func in funcs if func is not None for use in _INDEX_USES)


def _module_text(path: Path) -> str:
    if path not in _TEXTS:
        _TEXTS[path] = path.read_text(encoding="utf-8")
    return _TEXTS[path]


def _source(func: Callable[..., Any]) -> str:
    """The source text of a test or fixture function ("" for one defined outside Python source)."""
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, deselect the tests that never reach a node's index (the default run has them)."""
    if BACKEND == "sqlite":
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError(f"DICOM_NODE_TEST_BACKEND={BACKEND!r}: expected sqlite or postgresql")
    keep = [item for item in items if touches_index(item)]
    config.hook.pytest_deselected(items=[item for item in items if not touches_index(item)])
    items[:] = keep


@pytest.fixture(scope="session", autouse=BACKEND == "postgresql")
def postgresql_pass(request: pytest.FixtureRequest) -> Iterator[None]:
    """The PostgreSQL pass's cluster, named to every node through ``DICOM_NODE_TEST_POSTGRES``."""
    if os.environ.get("DICOM_NODE_TEST_POSTGRES"):
        yield  # a server the caller started
        return
    os.environ["DICOM_NODE_TEST_POSTGRES"] = str(request.getfixturevalue("postgres_server"))
    try:
        yield
    finally:
        del os.environ["DICOM_NODE_TEST_POSTGRES"]


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
