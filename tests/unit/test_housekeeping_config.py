"""The markets file's `housekeeping:` section (retentions of the market_maintenance DAG)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from marketflow.config import ConfigError, HousekeepingConfig, RetentionConfig, load_config
from marketflow.housekeeping import retention_floor

REPO = Path(__file__).resolve().parents[2]
MARKETS = "exchanges:\n  binance:\n    markets: [BTC/USDT]\n"


def load(tmp_path: Path, housekeeping: str):
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS + housekeeping)
    return load_config(path, env={"RETENTION": "45"})


def test_defaults_without_the_section(tmp_path: Path) -> None:
    assert load(tmp_path, "").housekeeping == HousekeepingConfig(
        ops_retention_days=30, rejects_body_retention_days=30, rejects_retention_days=365,
        airflow_metadata_retention_days=30, batch_size=10_000)


def test_values_and_environment_substitution(tmp_path: Path) -> None:
    config = load(tmp_path, "housekeeping:\n  ops_retention_days: ${RETENTION}\n  rejects_body_retention_days: 7\n"
                            "  airflow_metadata_retention_days: 14\n  batch_size: 500\n").housekeeping
    assert (config.ops_retention_days, config.rejects_body_retention_days, config.rejects_retention_days,
            config.airflow_metadata_retention_days, config.batch_size) == (45, 7, 365, 14, 500)


def test_the_shipped_markets_file_states_the_defaults() -> None:
    assert load_config(REPO / "include" / "config" / "markets.yml", env={}).housekeeping == HousekeepingConfig()


@pytest.mark.parametrize(("section", "key", "problem"), [
    ("housekeeping: 30\n", "housekeeping", "expected a mapping of retentions"),
    ("housekeeping:\n  ops_retention: 30\n", "housekeeping.ops_retention", "unknown key"),
    ("housekeeping:\n  ops_retention_days: 0\n", "housekeeping.ops_retention_days", "0 is out of range"),
    ("housekeeping:\n  airflow_metadata_retention_days: -3\n", "housekeeping.airflow_metadata_retention_days",
     "-3 is out of range"),
    ("housekeeping:\n  ops_retention_days: a month\n", "housekeeping.ops_retention_days", "is not an integer"),
    ("housekeeping:\n  rejects_body_retention_days: 400\n", "housekeeping.rejects_body_retention_days",
     "400 days is longer than rejects_retention_days (365)"),
    ("housekeeping:\n  batch_size: 10\n", "housekeeping.batch_size", "10 is out of range"),  # fix: 100 to 1000000 rows
])
def test_mistakes_name_the_key_and_the_fix(tmp_path: Path, section: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, section)
    assert err.value.key == key and problem in err.value.problem and err.value.fix
    assert str(err.value).startswith(f"{tmp_path / 'markets.yml'}: {key}: ")


def test_retention_keeps_everything_unless_set(tmp_path: Path) -> None:
    assert load(tmp_path, "").retention == RetentionConfig(ohlcv_1m_months=None)
    assert load(tmp_path, "retention:\n").retention.ohlcv_1m_months is None
    assert load(tmp_path, "retention: {ohlcv_1m_months: '${RETENTION}'}\n").retention.ohlcv_1m_months == 45


@pytest.mark.parametrize(("section", "key", "problem"), [
    ("retention: 24\n", "retention", "expected a mapping of months"),
    ("retention:\n  ohlcv_1m_days: 30\n", "retention.ohlcv_1m_days", "unknown key"),
    ("retention:\n  ohlcv_1m_months: 0\n", "retention.ohlcv_1m_months", "0 is out of range"),
    ("retention:\n  ohlcv_1m_months: two years\n", "retention.ohlcv_1m_months", "is not an integer"),
])
def test_retention_mistakes_name_the_key_and_the_fix(tmp_path: Path, section: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, section)
    assert err.value.key == key and problem in err.value.problem and err.value.fix


@pytest.mark.parametrize(("now", "months", "floor"), [
    (datetime(2026, 12, 4, 3, 17, tzinfo=UTC), 24, datetime(2025, 1, 1, tzinfo=UTC)),
    (datetime(2026, 12, 4, tzinfo=UTC), 1, datetime(2026, 12, 1, tzinfo=UTC)),  # only the current month
    (datetime(2026, 1, 31, 23, 59, tzinfo=UTC), 13, datetime(2025, 1, 1, tzinfo=UTC)),
    (datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))), 2, datetime(2026, 1, 1, tzinfo=UTC)),  # Feb UTC
])
def test_retention_floor_is_the_first_of_a_month(now: datetime, months: int, floor: datetime) -> None:
    assert retention_floor(now, months) == floor
