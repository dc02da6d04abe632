"""Shared fixtures: the test run starts its own real PostgreSQL and MongoDB-protocol server.

Nothing here mocks a database. Set MONGO_URI to run the same tests against a MongoDB you already
have (e.g. a real mongod).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pymongo
import pytest

from marketflow.schema import apply_ddl
from scripts import stack

REPO = Path(__file__).resolve().parent.parent

TEST_ROOT = Path(os.environ.get("MARKETFLOW_TEST_DIR", REPO / ".local" / "test"))
_counter = itertools.count()


@pytest.fixture(scope="session")
def test_root() -> Path:
    root = TEST_ROOT / f"run-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(test_root: Path) -> Iterator[stack.PostgresServer]:
    server = stack.PostgresServer(test_root / "postgres", stack.free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def warehouse_dsn(pg_server: stack.PostgresServer) -> Iterator[str]:
    """A fresh warehouse database with include/sql applied, dropped after the test."""
    name = f"mf_test_{os.getpid()}_{next(_counter)}"
    pg_server.create_database(name)
    dsn = pg_server.dsn(name)
    conn = psycopg2.connect(dsn)
    try:
        apply_ddl(conn)
    finally:
        conn.close()
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def pg_conn(warehouse_dsn: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(warehouse_dsn)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def mongo_uri(test_root: Path) -> Iterator[str]:
    if os.environ.get("MONGO_URI"):
        yield os.environ["MONGO_URI"]
        return
    port = stack.free_port()
    proc = stack.mongo_server(test_root, test_root / "run", port)
    proc.start()
    yield f"mongodb://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def mongo_db(mongo_uri: str) -> Iterator[pymongo.database.Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    name = f"mf_test_{os.getpid()}_{next(_counter)}"
    yield client[name]
    client.drop_database(name)
    client.close()


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    return REPO / "include" / "sample_data"


@pytest.fixture(scope="session")
def emulator_url(test_root: Path, sample_data_dir: Path) -> Iterator[str]:
    """The exchange emulator on the bundled real sample data (plus its synthetic markets)."""
    port = stack.free_port()
    proc = stack.emulator_server(test_root / "run", port, sample_data_dir, ["--binance-weight-limit", "0"])
    proc.start()
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(autouse=True)
def _fresh_markets_cache() -> Iterator[None]:
    """Each test starts like a new task process: no market list cached from an earlier test."""
    from marketflow import exchanges

    exchanges._markets_cache.clear()
    yield
    exchanges._markets_cache.clear()


@pytest.fixture(autouse=True)
def _marketflow_logs_to_stdlib() -> None:
    """marketflow's structlog events go to stdlib logging (pytest's caplog) in every test, also after a
    test imported Airflow, which configures structlog for itself (marketflow.logs)."""
    from marketflow.logs import route_to_stdlib

    route_to_stdlib(force=True)
