"""Figure 8b: narrower layouts of the per-candle tables, each built from the same rows in a scratch
schema and sized like today's, as bytes per candle and as a ratio to today's total.

Every alternative replaces one of today's relations (staging.ohlcv, marts.ohlcv_1m,
marts.indicators_1m) and is built the way today's is: staging row by row in load order (time,
then market) into a table that already has its primary key, so its index grows by page splits as
the loader's does; the marts by CREATE TABLE AS in key order and CREATE INDEX after, as dbt's full
refresh does. A "control" rebuilds today's layout the same way: it must come out at today's size
(within a few %), which is what shows the method compares like with like.

The combinations (8b) add up: total today - the replaced relations + their replacements (+ the
small lookup tables an alternative needs: markets, runs). See docs/storage.md for the design note.
"""

from __future__ import annotations

from typing import Any

from bench.context import say

SCHEMA = "storage_alt"

# Lookup tables some alternatives need: one row per market / per Airflow run (a few KiB).
LOOKUPS = f"""
create table {SCHEMA}.market (market_id int generated always as identity primary key, exchange text not null,
                              symbol text not null, timeframe text not null, unique (exchange, symbol, timeframe));
insert into {SCHEMA}.market (exchange, symbol, timeframe)
    select distinct exchange, symbol, timeframe from staging.ohlcv order by 1, 2, 3;
create table {SCHEMA}.run (run_key int generated always as identity primary key, run_id text not null unique);
insert into {SCHEMA}.run (run_id) select distinct run_id from staging.ohlcv order by 1;
"""

_STAGING_COLUMNS = ("exchange text, symbol text, timeframe text, open_time timestamptz, open numeric, high numeric, "
                    "low numeric, close numeric, volume numeric, quote_volume numeric, trades bigint")
_LOAD_ORDER = "order by s.open_time, s.exchange, s.symbol"
_JOIN_IDS = (f"join {SCHEMA}.market m using (exchange, symbol, timeframe) join {SCHEMA}.run r using (run_id)")


def _staging(key: str, columns: str, select: str, pk: str, joins: str = "") -> list[str]:
    return [f"create table {SCHEMA}.{key} ({columns}, primary key ({pk}))",
            f"insert into {SCHEMA}.{key} select {select} from staging.ohlcv s {joins} {_LOAD_ORDER}",
            f"create index on {SCHEMA}.{key} using brin (ingested_at)"]


# Shared by the alternatives built on them (ohlcv_1m with a market_id; with the indicator columns merged in).
_O_MARKET_COLUMNS = ("o.open_time, o.ingested_at, o.trades, m.market_id, o.open, o.high, o.low, o.close, "
                     "o.volume, o.quote_volume")
_O_MARKET_FROM = (f"marts.ohlcv_1m o join {SCHEMA}.market m on m.exchange = o.exchange "
                  "and m.symbol = o.symbol and m.timeframe = '1m'")
_O_MERGED_COLUMNS = ("o.open_time, o.ingested_at, o.trades, i.candle_index, i.sma_20, i.sma_50, i.sma_200, "
                     "i.ema_12, i.ema_26, i.ema_50, i.rsi_14, i.macd_line, i.macd_signal, i.last_ingested_at, "
                     "m.market_id, i.is_closed, i.inputs_complete, o.open, o.high, o.low, o.close, o.volume, "
                     "o.quote_volume")
_O_MERGED_FROM = (f"marts.ohlcv_1m o join {SCHEMA}.market m on m.exchange = o.exchange and m.symbol = o.symbol "
                  "and m.timeframe = '1m' left join marts.indicators_1m i on i.exchange = o.exchange "
                  "and i.symbol = o.symbol and i.open_time = o.open_time")


def _mart(key: str, select: str, source: str, order: str, indexes: list[str]) -> list[str]:
    return [f"create table {SCHEMA}.{key} as select {select} from {source} order by {order}",
            *(f"create {ix.replace('@', f'{SCHEMA}.{key}')}" for ix in indexes)]


# (key, relation replaced, what changes, statements, lookup tables used)
ALTERNATIVES: list[tuple[str, str, str, list[str], bool]] = [
    ("st_control", "staging.ohlcv", "today's layout rebuilt the same way (method check)",
     _staging("st_control", f"{_STAGING_COLUMNS}, raw_payload_id text, run_id text, ingested_at timestamptz",
              "s.*", "exchange, symbol, timeframe, open_time"), False),
    ("st_bytea", "staging.ohlcv", "raw_payload_id as bytea (16 bytes, not 32 hex characters)",
     _staging("st_bytea", f"{_STAGING_COLUMNS}, raw_payload_id bytea, run_id text, ingested_at timestamptz",
              "s.exchange, s.symbol, s.timeframe, s.open_time, s.open, s.high, s.low, s.close, s.volume, "
              "s.quote_volume, s.trades, decode(s.raw_payload_id, 'hex'), s.run_id, s.ingested_at",
              "exchange, symbol, timeframe, open_time"), False),
    ("st_ids", "staging.ohlcv", "+ run_id as an int key into a runs table",
     _staging("st_ids", f"{_STAGING_COLUMNS}, raw_payload_id bytea, run_key int, ingested_at timestamptz",
              "s.exchange, s.symbol, s.timeframe, s.open_time, s.open, s.high, s.low, s.close, s.volume, "
              "s.quote_volume, s.trades, decode(s.raw_payload_id, 'hex'), r.run_key, s.ingested_at",
              "exchange, symbol, timeframe, open_time", _JOIN_IDS), True),
    ("st_market", "staging.ohlcv", "+ (exchange, symbol, timeframe) as an int market_id; key (market_id, open_time); "
     "columns ordered 8-byte, 4-byte, variable",
     _staging("st_market", "open_time timestamptz, ingested_at timestamptz, trades bigint, market_id int, run_key int, "
              "open numeric, high numeric, low numeric, close numeric, volume numeric, quote_volume numeric, "
              "raw_payload_id bytea",
              "s.open_time, s.ingested_at, s.trades, m.market_id, r.run_key, s.open, s.high, s.low, s.close, "
              "s.volume, s.quote_volume, decode(s.raw_payload_id, 'hex')",
              "market_id, open_time", _JOIN_IDS), True),
    ("st_reindexed", "staging.ohlcv", "today's layout, the primary key rebuilt once (REINDEX: what a closed month's "
     "partition could get; live inserts of many markets leave its leaf pages half full)",
     [*_staging("st_reindexed", f"{_STAGING_COLUMNS}, raw_payload_id text, run_id text, ingested_at timestamptz",
                "s.*", "exchange, symbol, timeframe, open_time"), f"reindex table {SCHEMA}.st_reindexed"], False),
    ("st_market_reindexed", "staging.ohlcv", "st_market, its primary key rebuilt once (REINDEX)",
     [*_staging("st_market_reindexed", "open_time timestamptz, ingested_at timestamptz, trades bigint, market_id int, "
                "run_key int, open numeric, high numeric, low numeric, close numeric, volume numeric, "
                "quote_volume numeric, raw_payload_id bytea",
                "s.open_time, s.ingested_at, s.trades, m.market_id, r.run_key, s.open, s.high, s.low, s.close, "
                "s.volume, s.quote_volume, decode(s.raw_payload_id, 'hex')",
                "market_id, open_time", _JOIN_IDS), f"reindex table {SCHEMA}.st_market_reindexed"], True),
    ("o_control", "marts.ohlcv_1m", "today's layout rebuilt the same way (method check)",
     _mart("o_control", "*", "marts.ohlcv_1m", "exchange, symbol, open_time",
           ["unique index on @ (exchange, symbol, open_time desc)", "index on @ (ingested_at)"]), False),
    ("o_no_lineage", "marts.ohlcv_1m", "without raw_payload_id, run_id (lineage stays in staging, same key) "
     "and close_time (open_time + 1 min - 1 ms, a view column)",
     _mart("o_no_lineage", "exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades, "
           "ingested_at", "marts.ohlcv_1m", "exchange, symbol, open_time",
           ["unique index on @ (exchange, symbol, open_time desc)", "index on @ (ingested_at)"]), False),
    ("o_market", "marts.ohlcv_1m", "+ market_id int for (exchange, symbol), aligned columns",
     _mart("o_market", _O_MARKET_COLUMNS, _O_MARKET_FROM, "m.market_id, o.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ (ingested_at)"]), True),
    ("o_market_brin", "marts.ohlcv_1m", "+ ingested_at BRIN instead of btree (only right while rows are "
     "appended in load order: time partitions, or no re-sort on full refresh)",
     _mart("o_market_brin", _O_MARKET_COLUMNS, _O_MARKET_FROM, "m.market_id, o.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ using brin (ingested_at)"]), True),
    ("o_view", "marts.ohlcv_1m", "a view over staging.ohlcv (0 bytes; staging is then read by analysts: see note)",
     [f"create view {SCHEMA}.o_view as select * from staging.ohlcv where timeframe = '1m'"], False),
    ("o_merged", "marts.ohlcv_1m", "ohlcv_1m as o_market_brin with the indicator columns of i_market_nostate on "
     "the same row (one tuple header, key and index per candle instead of two); indicators_1m a view over it",
     _mart("o_merged", _O_MERGED_COLUMNS,
           _O_MERGED_FROM, "m.market_id, o.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ using brin (ingested_at)",
            "index on @ using brin (last_ingested_at)"]), True),
    ("o_merged_ff100", "marts.ohlcv_1m", "+ the key index with fillfactor 100 (built sorted, appended at the end "
     "of each market's range)",
     _mart("o_merged_ff100", _O_MERGED_COLUMNS,
           _O_MERGED_FROM, "m.market_id, o.open_time",
           ["unique index on @ (market_id, open_time desc) with (fillfactor = 100)",
            "index on @ using brin (ingested_at)", "index on @ using brin (last_ingested_at)"]), True),
    ("o_merged_btree", "marts.ohlcv_1m", "o_merged without last_ingested_at (on the merged row it is the candle's "
     "ingested_at) and with a btree on ingested_at, as today (right whatever the physical order)",
     _mart("o_merged_btree", "o.open_time, o.ingested_at, o.trades, i.candle_index, i.sma_20, i.sma_50, i.sma_200, "
           "i.ema_12, i.ema_26, i.ema_50, i.rsi_14, i.macd_line, i.macd_signal, m.market_id, "
           "i.is_closed, i.inputs_complete, o.open, o.high, o.low, o.close, o.volume, o.quote_volume",
           _O_MERGED_FROM, "m.market_id, o.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ (ingested_at)"]), True),
    ("i_view", "marts.indicators_1m", "a view over the merged ohlcv_1m (o_merged)",
     [f"create view {SCHEMA}.i_view as select * from {SCHEMA}.o_merged"], False),
    ("i_control", "marts.indicators_1m", "today's layout rebuilt the same way (method check)",
     _mart("i_control", "*", "marts.indicators_1m", "exchange, symbol, open_time",
           ["unique index on @ (exchange, symbol, open_time desc)", "index on @ (last_ingested_at)"]), False),
    ("i_market", "marts.indicators_1m", "market_id int for (exchange, symbol), without close (in ohlcv_1m; "
     "a view joins it back), aligned columns",
     _mart("i_market", "i.open_time, i.last_ingested_at, i.candle_index, i.sma_20, i.sma_50, i.sma_200, i.ema_12, "
           "i.ema_26, i.ema_50, i.rsi_14, i.macd_line, i.macd_signal, i.macd_histogram, i.rsi_avg_gain_14, "
           "i.rsi_avg_loss_14, i.macd_fast_ema, m.market_id, i.is_closed, i.inputs_complete",
           f"marts.indicators_1m i join {SCHEMA}.market m on m.exchange = i.exchange and m.symbol = i.symbol "
           "and m.timeframe = '1m'", "m.market_id, i.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ (last_ingested_at)"]), True),
    ("i_market_nostate", "marts.indicators_1m", "+ without macd_histogram (line - signal, a view column) and "
     "the three recursion states (rsi_avg_gain/loss_14, macd_fast_ema) kept only for the last candles of a market",
     _mart("i_market_nostate", "i.open_time, i.last_ingested_at, i.candle_index, i.sma_20, i.sma_50, i.sma_200, "
           "i.ema_12, i.ema_26, i.ema_50, i.rsi_14, i.macd_line, i.macd_signal, m.market_id, i.is_closed, "
           "i.inputs_complete", f"marts.indicators_1m i join {SCHEMA}.market m on m.exchange = i.exchange "
           "and m.symbol = i.symbol and m.timeframe = '1m'", "m.market_id, i.open_time",
           ["unique index on @ (market_id, open_time desc)", "index on @ using brin (last_ingested_at)"]), True),
]

# The rollups and their indicators: the same market_id change, built generically from today's table
# (its columns, with (exchange, symbol) replaced by market_id, and its indexes likewise).
ROLLUPS = ["marts.ohlcv_5m", "marts.indicators_5m", "marts.ohlcv_15m", "marts.indicators_15m", "marts.ohlcv_1h",
           "marts.indicators_1h", "marts.ohlcv_1d", "marts.indicators_1d", "marts.ohlcv_1w", "marts.indicators_1w"]
_NARROW_1M = {"staging.ohlcv": "st_market", "marts.ohlcv_1m": "o_market_brin",
              "marts.indicators_1m": "i_market_nostate"}

# Which alternative of each relation every combination takes (None = today's).
COMBINATIONS: dict[str, dict[str, str | None]] = {
    "lineage ids only (bytea payload id, int run id) in staging, none in ohlcv_1m":
        {"staging.ohlcv": "st_ids", "marts.ohlcv_1m": "o_no_lineage", "marts.indicators_1m": None},
    "market_id everywhere + lineage as above":
        {"staging.ohlcv": "st_market", "marts.ohlcv_1m": "o_market", "marts.indicators_1m": "i_market"},
    "market_id everywhere + BRIN watermarks + narrow indicators":
        {"staging.ohlcv": "st_market", "marts.ohlcv_1m": "o_market_brin", "marts.indicators_1m": "i_market_nostate"},
    "the previous + market_id in every rollup and its indicators":
        {**_NARROW_1M, **{r: "r_" + r.split(".")[1] for r in ROLLUPS}},
    "market_id everywhere, indicators on the ohlcv_1m row (indicators_1m a view), BRIN watermarks":
        {**_NARROW_1M, "marts.ohlcv_1m": "o_merged", "marts.indicators_1m": "i_view",
         **{r: "r_" + r.split(".")[1] for r in ROLLUPS}},
    "the same with a btree (not BRIN) on ingested_at, one watermark column":
        {**_NARROW_1M, "marts.ohlcv_1m": "o_merged_btree", "marts.indicators_1m": "i_view",
         **{r: "r_" + r.split(".")[1] for r in ROLLUPS}},
    "the btree one + staging's primary key rebuilt once (closed partitions)":
        {**_NARROW_1M, "staging.ohlcv": "st_market_reindexed", "marts.ohlcv_1m": "o_merged_btree",
         "marts.indicators_1m": "i_view", **{r: "r_" + r.split(".")[1] for r in ROLLUPS}},
    "the BRIN one + fillfactor 100 on the key index":
        {**_NARROW_1M, "marts.ohlcv_1m": "o_merged_ff100", "marts.indicators_1m": "i_view",
         **{r: "r_" + r.split(".")[1] for r in ROLLUPS}},
    "ohlcv_1m as a view over a narrow staging + narrow indicators":
        {"staging.ohlcv": "st_market", "marts.ohlcv_1m": "o_view", "marts.indicators_1m": "i_market_nostate"},
}


def _uses_lookups(key: str) -> bool:
    """Whether the alternative's size includes the lookup tables (the generic rollup ones do not)."""
    return any(a[0] == key and a[4] for a in ALTERNATIVES)


def measure_alternatives(conn, rels: list[dict[str, Any]], candles: int) -> dict[str, Any]:
    """Build every alternative in schema storage_alt, size it, drop the schema; bytes per candle and
    ratios to today's total (``rels``: today's relation sizes from bench.storage.relation_sizes)."""
    today = {r["relation"]: r["total"] for r in rels}
    total = sum(today.values())
    out: dict[str, Any] = {"today_bytes_per_candle": round(total / candles, 1), "alternatives": [],
                           "combinations": []}
    sizes: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.execute(f"drop schema if exists {SCHEMA} cascade")
        cur.execute(f"create schema {SCHEMA}")
        cur.execute(LOOKUPS)
        cur.execute(f"vacuum (analyze) {SCHEMA}.market")
        cur.execute(f"vacuum (analyze) {SCHEMA}.run")
        cur.execute(f"select pg_total_relation_size('{SCHEMA}.market') + pg_total_relation_size('{SCHEMA}.run')")
        lookups = cur.fetchone()[0]
        for key, replaces, what, statements, uses_lookups in ALTERNATIVES:
            for sql in statements:
                cur.execute(sql)
            cur.execute("select relkind from pg_class where oid = %s::regclass", (f"{SCHEMA}.{key}",))
            if cur.fetchone()[0] == "r":
                cur.execute(f"vacuum (analyze) {SCHEMA}.{key}")
            cur.execute("select pg_total_relation_size(%s::regclass), pg_relation_size(%s::regclass)",
                        (f"{SCHEMA}.{key}", f"{SCHEMA}.{key}"))
            size, heap = cur.fetchone()
            sizes[key] = size + (lookups if uses_lookups else 0)
            row = {"key": key, "replaces": replaces, "what": what,
                   "bytes_per_candle": round(sizes[key] / candles, 1),
                   "heap_bytes_per_candle": round(heap / candles, 1),
                   "today_bytes_per_candle": round(today[replaces] / candles, 1),
                   "relation_ratio": round(sizes[key] / today[replaces], 3),
                   "total_ratio": round((total - today[replaces] + sizes[key]) / total, 3)}
            out["alternatives"].append(row)
            say(f"  {key:18s} {row['bytes_per_candle']:7.1f} B/candle vs {row['today_bytes_per_candle']:7.1f} "
                f"({replaces}); total x{row['total_ratio']}")
        for relation in ROLLUPS:
            key = "r_" + relation.split(".")[1]
            cur.execute("""select string_agg(format('r.%%I', column_name), ', ' order by ordinal_position)
                           from information_schema.columns where table_schema || '.' || table_name = %s
                             and column_name not in ('exchange', 'symbol')""", (relation,))
            columns = cur.fetchone()[0]
            cur.execute(f"create table {SCHEMA}.{key} as select m.market_id, {columns} from {relation} r "
                        f"join {SCHEMA}.market m on m.exchange = r.exchange and m.symbol = r.symbol "
                        "and m.timeframe = '1m' order by m.market_id, r.open_time")
            cur.execute("select pg_get_indexdef(indexrelid) from pg_index where indrelid = %s::regclass", (relation,))
            for (indexdef,) in cur.fetchall():
                head, _, rest = indexdef.partition(" ON ")
                head = "CREATE UNIQUE INDEX" if "UNIQUE" in head else "CREATE INDEX"
                rest = rest.replace(relation, f"{SCHEMA}.{key}", 1).replace("(exchange, symbol, ", "(market_id, ")
                cur.execute(f"{head} ON {rest}")
            cur.execute(f"vacuum (analyze) {SCHEMA}.{key}")
            cur.execute("select pg_total_relation_size(%s::regclass)", (f"{SCHEMA}.{key}",))
            sizes[key] = cur.fetchone()[0]
            out["alternatives"].append({
                "key": key, "replaces": relation, "what": "market_id int for (exchange, symbol)",
                "bytes_per_candle": round(sizes[key] / candles, 2), "today_bytes_per_candle":
                round(today[relation] / candles, 2), "relation_ratio": round(sizes[key] / today[relation], 3),
                "total_ratio": round((total - today[relation] + sizes[key]) / total, 3)})
            say(f"  {key:18s} {sizes[key] / candles:7.1f} B/candle vs {today[relation] / candles:7.1f} ({relation})")
        cur.execute(f"drop schema {SCHEMA} cascade")
    for name, choice in COMBINATIONS.items():
        new_total = total
        for relation, key in choice.items():
            if key is not None:
                new_total += sizes[key] - today[relation]
        # the lookup tables are counted once, not once per relation using them
        users = sum(1 for key in choice.values() if key and _uses_lookups(key))
        new_total -= max(0, users - 1) * lookups
        out["combinations"].append({"combination": name, "choice": choice,
                                    "bytes_per_candle": round(new_total / candles, 1),
                                    "ratio_to_today": round(new_total / total, 3)})
        say(f"  combination '{name}': {new_total / candles:.1f} B/candle, x{new_total / total:.3f} of today")
    return out
