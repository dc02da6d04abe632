"""Fixtures for running the dbt project (dbt/) against the throwaway warehouse of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.dbt_helpers import DBT_EXECUTABLE, Candle, DbtRunner, copy_candles, dbt_env_for, read_sample_candles


@pytest.fixture
def dbt_env(warehouse_dsn: str, tmp_path: Path) -> dict[str, str]:
    """Environment for dbt against this test's warehouse; target/ and logs/ under the test's tmp dir."""
    return dbt_env_for(warehouse_dsn, tmp_path / "dbt")


@pytest.fixture
def dbt(dbt_env: dict[str, str]) -> DbtRunner:
    """`dbt("build")` runs dbt against the test's warehouse and fails the test with dbt's output."""
    assert Path(DBT_EXECUTABLE).exists(), f"dbt executable not found: {DBT_EXECUTABLE} (set MARKETFLOW_DBT_EXECUTABLE)"
    return DbtRunner(dbt_env)


@pytest.fixture(scope="session")
def sample_candles(sample_data_dir: Path) -> list[Candle]:
    candles = read_sample_candles(sample_data_dir)
    assert len(candles) == 5760, f"expected the 4 sample days (5,760 candles) under {sample_data_dir}"
    return candles


@pytest.fixture
def loaded_warehouse(pg_conn, sample_candles: list[Candle]):
    """The test warehouse with the 4 sample CSVs COPYed into staging.ohlcv; returns the connection."""
    copy_candles(pg_conn, sample_candles)
    return pg_conn
