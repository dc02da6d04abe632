"""Read-only looks at the warehouse for the demo, the tests and the fault suite (never the pipeline):
whether a re-run changed a table, and the repair tasks as rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2 import sql

# Tables a re-run of the same window must leave byte-for-byte unchanged, with their key and the
# columns computed when queried (excluded from the checksum). Used by the demo and the Airflow test.
RERUN_INVARIANT_TABLES: dict[str, tuple[list[str], list[str]]] = {
    "staging.ohlcv": (["exchange", "symbol", "timeframe", "open_time"], []),
    "staging.ohlcv_rejects": (["raw_payload_id", "row_index"], []),
    "staging.ticker": (["exchange", "symbol", "ts"], []),
    "marts.ohlcv_1m": (["exchange", "symbol", "open_time"], []),
    # Views evaluated when queried: staleness and is_active move with the clock, the rest must not.
    "marts.latest_price": (["exchange", "symbol"], ["staleness_seconds"]),
    # last_success_at records when the pipeline last loaded the market: a re-run moves it by design.
    "marts.markets": (["exchange", "symbol"], ["is_active", "last_success_at"]),
}


# Where a row came from and when it was stored: the same candles loaded by two stacks (two fresh demos,
# the LocalExecutor and the CeleryExecutor) differ only here. Left out of the "data" checksums, which
# compare the data of two stacks; kept in the re-run checksums, which prove one stack's re-run changed nothing.
# A table without some of them is fine (marts.ohlcv_1m keeps only ingested_at: its ids are staging's, shown by
# the view marts.ohlcv_1m_lineage), so data checksums compare across that change too.
LINEAGE_COLUMNS = ["run_id", "raw_payload_id", "ingested_at"]

# Values a table holds that are computed from its own candles: the 1m indicators on ohlcv_1m's rows
# (docs/storage.md). In the re-run checksums (a re-run must not change them either), left out of the
# data checksums, which then compare with stacks from before they moved onto the row.
DERIVED_COLUMNS: dict[str, list[str]] = {
    "marts.ohlcv_1m": ["candle_index", "inputs_complete", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26",
                       "ema_50", "rsi_14", "macd_line", "macd_signal", "rsi_avg_gain_14", "rsi_avg_loss_14",
                       "macd_fast_ema"],
}


def table_checksum(conn, table: str, key: Sequence[str], exclude: Sequence[str] = ()) -> tuple[int, str]:
    """(row count, md5 over the rows in key order): how tests and the demo prove a re-run changed nothing.

    ``exclude`` drops columns that are computed when queried (e.g. staleness), not stored.
    """
    schema, _, name = table.partition(".")
    row = sql.SQL("(to_jsonb(t) - {cols})::text").format(cols=sql.Literal(list(exclude))) if exclude \
        else sql.SQL("t::text")
    query = sql.SQL("SELECT count(*), coalesce(md5(string_agg({row}, E'\\n' ORDER BY {order})), '') "
                    "FROM {table} t").format(row=row, order=sql.SQL(", ").join(map(sql.Identifier, key)),
                                             table=sql.Identifier(schema, name))
    with conn.cursor() as cur:
        cur.execute(query)
        count, digest = cur.fetchone()
    return int(count), str(digest)


def task_rows(conn) -> list[tuple[Any, ...]]:
    """Every gap-repair task: (exchange, symbol, window_start, window_end, status, outcome, attempts)."""
    with conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, window_start, window_end, status, outcome, attempts "
                    "FROM ops.backfill_tasks ORDER BY window_start")
        return cur.fetchall()
