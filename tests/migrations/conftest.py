"""Fixtures of the migration tests: empty databases on the test server, the frozen release, catalog dumps."""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from migration_support import RELEASE_DIR, schema_statements

_counter = itertools.count()


@pytest.fixture
def new_database(pg_server) -> Iterator[Callable[[], str]]:
    """Makes empty databases owned by the pipeline role (dropped after the test); returns their DSNs."""
    names: list[str] = []

    def make() -> str:
        name = f"mf_migr_{os.getpid()}_{next(_counter)}"
        pg_server.create_database(name)
        names.append(name)
        return pg_server.dsn(name)

    yield make
    for name in names:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def release_applier() -> ModuleType:
    """plugins/marketflow/schema.py of the last release before migrations, as released."""
    spec = importlib.util.spec_from_file_location("checksum_applier_3741f8b", RELEASE_DIR / "checksum_applier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def schema_dump(pg_server) -> Callable[[str], list[str]]:
    """The schema of a database as pg_dump of the test server's own binaries prints it, by statement."""
    return lambda dsn: schema_statements(pg_server._pg("pg_dump"), dsn)
