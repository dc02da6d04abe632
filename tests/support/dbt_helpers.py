"""Helpers for the dbt tests: run the dbt CLI against a test warehouse, load the sample candles.

(A module of its own, not tests/dbt/__init__.py: a package named `dbt` would shadow dbt-core for
anything imported in the same pytest process.) dbt lives in its own virtualenv (dbt-core's pins
conflict with Airflow's), so it is run as a subprocess:
$MARKETFLOW_DBT_EXECUTABLE, default .local/dbt-venv/bin/dbt.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT_DIR = REPO / "dbt"
DBT_EXECUTABLE = os.environ.get(
    "MARKETFLOW_DBT_EXECUTABLE", str(REPO / ".local" / "dbt-venv" / "bin" / "dbt")
)

# Every relation the project builds that holds data (views whose output depends on now() are
# checksummed without their clock-dependent columns).
MART_CHECKSUM_QUERIES: dict[str, tuple[str, str]] = {
    "ohlcv_1m": ("select * from marts.ohlcv_1m", "exchange, symbol, open_time"),
    # the 1m indicators, stored with the candles in candles_1m (ohlcv_1m shows the candle columns only)
    "indicators_1m": ("select * from marts.indicators_1m", "exchange, symbol, open_time"),
    "int_markets": ("select * from dbt_intermediate.int_markets", "exchange, symbol"),
    "markets": ("select * from marts.markets", "exchange, symbol"),
    "latest_price": (
        (
            "select exchange, symbol, candle_open_time, candle_close_time, candle_close, ticker_ts,"
            " ticker_last, ticker_bid, ticker_ask, price, price_source, as_of from marts.latest_price"
        ),
        "exchange, symbol",
    ),
}


def dbt_env_for(dsn: str, work_dir: Path) -> dict[str, str]:
    """Environment that points dbt/profiles.yml at `dsn`, with target/ and logs/ under `work_dir`."""
    url = urlparse(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETFLOW_PG_", "DBT_", "PG"))}
    env.update(
        MARKETFLOW_PG_HOST=url.hostname or "localhost",
        MARKETFLOW_PG_PORT=str(url.port or 5432),
        MARKETFLOW_PG_USER=unquote(url.username or ""),
        MARKETFLOW_PG_PASSWORD=unquote(url.password or ""),
        MARKETFLOW_PG_DATABASE=url.path.lstrip("/"),
        DBT_PROFILES_DIR=str(DBT_PROJECT_DIR),
        DBT_PROJECT_DIR=str(DBT_PROJECT_DIR),
        DBT_TARGET_PATH=str(work_dir / "target"),
        DBT_LOG_PATH=str(work_dir / "logs"),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        DBT_USE_COLORS="false",
        DBT_PRINTER_WIDTH="120",
    )
    return env


@dataclass
class DbtResult:
    args: list[str]
    returncode: int
    output: str
    seconds: float


class DbtRunner:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.timings: list[tuple[str, float]] = []

    def env_path(self, name: str) -> Path:
        """A path setting of this runner's environment, e.g. DBT_TARGET_PATH."""
        return Path(self.env[name])

    def __call__(self, *args: str, expect_success: bool = True, timeout: float = 600) -> DbtResult:
        cmd = [DBT_EXECUTABLE, *args]
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=DBT_PROJECT_DIR,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        result = DbtResult(list(args), proc.returncode, proc.stdout, time.monotonic() - started)
        self.timings.append((" ".join(args), result.seconds))
        if expect_success and proc.returncode != 0:
            pytest.fail(f"`dbt {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}", pytrace=False)
        if not expect_success and proc.returncode == 0:
            pytest.fail(
                f"`dbt {' '.join(args)}` succeeded but was expected to fail:\n{proc.stdout}", pytrace=False
            )
        return result


# ---------------------------------------------------------------------------------------------
# Sample data: the bundled real exchange CSVs as staging.ohlcv rows, values kept as strings.


@dataclass(frozen=True)
class Candle:
    exchange: str
    symbol: str
    open_time: datetime
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str | None
    trades: str | None
    source_file: str


def _ms(value: str) -> datetime:
    stamp = int(value)
    if stamp >= 10**15:  # Binance spot dumps since 2025 are in microseconds
        stamp //= 1000
    return datetime.fromtimestamp(stamp / 1000, tz=UTC)


def read_sample_candles(sample_data_dir: Path) -> list[Candle]:
    candles: list[Candle] = []
    for path in sorted((sample_data_dir / "binance").glob("*/1m/*.csv")):
        symbol = path.parts[-3].replace("-", "/")
        with path.open(newline="") as f:
            for row in csv.reader(f):
                candles.append(Candle("binance", symbol, _ms(row[0]), *row[1:6], row[7], row[8], path.name))
    for path in sorted((sample_data_dir / "okx").glob("*/1m/*.csv")):
        symbol = path.parts[-3].replace("-", "/")
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                candles.append(
                    Candle(
                        "okx",
                        symbol,
                        _ms(row["open_time"]),
                        row["open"],
                        row["high"],
                        row["low"],
                        row["close"],
                        row["vol"],
                        row["vol_quote"],
                        None,
                        path.name,
                    )
                )
    return candles


def copy_candles(conn, candles: list[Candle], run_id: str = "test-run") -> None:
    """COPY candles into staging.ohlcv as 1m rows, numeric columns given as the files' strings."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    for c in candles:
        writer.writerow(
            [
                c.exchange,
                c.symbol,
                "1m",
                c.open_time.isoformat(),
                c.open,
                c.high,
                c.low,
                c.close,
                c.volume,
                c.quote_volume if c.quote_volume is not None else "",
                c.trades if c.trades is not None else "",
                f"{c.source_file}#{c.open_time:%H%M}",
                run_id,
            ]
        )
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(
            "COPY staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume,"
            " quote_volume, trades, raw_payload_id, run_id) FROM STDIN WITH (FORMAT csv)",
            buf,
        )
    conn.commit()


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.commit()
    return rows


def checksums(conn) -> dict[str, tuple[int, str]]:
    """(row count, md5 over every row's text in key order) per mart."""
    result = {}
    for name, (sql, order_by) in MART_CHECKSUM_QUERIES.items():
        ((count, digest),) = query(
            conn,
            f"select count(*), coalesce(md5(string_agg(t::text, E'\\n' order by {order_by})), '')"
            f" from ({sql}) t",
        )
        result[name] = (count, digest)
    return result


def dec(value: str | None) -> Decimal | None:
    return None if value in (None, "") else Decimal(value)
