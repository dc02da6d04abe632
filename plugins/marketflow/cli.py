"""Operator commands: ``marketflow <command>`` (installed by ``make install``), or
``python -m marketflow.cli <command>`` where only plugins/ is on the import path (Airflow's containers).

    check-config                        parse the markets file, list what it configures and each exchange's
                                        candle facts, refuse what an exchange cannot do (no fetchOHLCV, a
                                        timeframe it lacks), warn about what it cannot give
    pools --format json                 the Airflow pools of every exchange (live, hourly, backfill), for
                                        `airflow pools import`
    markets status                      every market's state: active, failing or suspended, and why
    markets resume <exchange> <symbol>  call a suspended market again from its next run
    markets suspend <exchange> <symbol> [--reason TEXT]
                                        stop calling a market until it is resumed or its entry changes
    gaps [--exchange X] [--symbol S] [--all]
                                        missing candles and their repair state (marts.data_quality_gaps)
    replay --start ISO --end ISO [--exchange X ...] [--symbol S ...]
                                        rebuild staging for a window from MongoDB raw, without calling
                                        any exchange (what market_backfill's from_raw does)
    rebuild [--exchange X] [--symbol S] [--start ISO] [--end ISO]
                                        rebuild the marts of one market and/or one time range from
                                        staging, leaving every other row as it is (marketflow.rebuild)
    db upgrade [--revision REV]         migrate the warehouse schema to the newest revision (or REV)
    db current                          the revision the warehouse is at
    db downgrade <revision>             migrate the warehouse schema back to an older revision
    apply-ddl                           storage preparation's schema step: upgrade, then re-apply the
                                        idempotent files (what every DAG run does first)
    api-token create <name>             a bearer token for the standalone market-data API, printed once
                                        (only its SHA-256 is stored)
    api-token list                      the tokens: name, created, last used, revoked
    api-token revoke <name>             revoke every live token of that name

The warehouse and MongoDB are the Airflow connections marketflow_postgres and marketflow_mongo
(AIRFLOW_CONN_MARKETFLOW_POSTGRES / _MONGO locally), as in the DAGs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from marketflow.config import ConfigError, MarketflowConfig, load_config

PROG = "marketflow"


def _warehouse(config: MarketflowConfig | None = None):
    """The pipeline's own warehouse session (Airflow connection, session timeouts of the markets file)."""
    from marketflow.connections import warehouse_connection

    return warehouse_connection(timeouts=config.timeouts if config else None)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-config", help="validate the markets file (and each timeframe against the exchange)")
    pools = sub.add_parser("pools", help="print one Airflow pool per exchange and path")
    pools.add_argument("--format", choices=["json", "text"], default="text")

    markets = sub.add_parser("markets", help="market states: status, resume, suspend")
    markets_sub = markets.add_subparsers(dest="action", required=True)
    markets_sub.add_parser("status", help="every market's state (ops.market_health)")
    for action in ("resume", "suspend"):
        p = markets_sub.add_parser(action, help=f"{action} one market")
        p.add_argument("exchange")
        p.add_argument("symbol")
        if action == "suspend":
            p.add_argument("--reason", default="suspended by an operator")

    gaps = sub.add_parser("gaps", help="missing candles and their repair state (marts.data_quality_gaps)")
    gaps.add_argument("--exchange")
    gaps.add_argument("--symbol")
    gaps.add_argument("--all", action="store_true", help="also list repaired gaps")
    gaps.add_argument("--limit", type=int, default=200, help="gaps listed at most (the totals count all)")

    replay = sub.add_parser("replay", help="rebuild staging for a window from MongoDB raw (no exchange call)")
    replay.add_argument("--start", required=True, help="ISO-8601 UTC, e.g. 2025-11-24T00:00:00Z")
    replay.add_argument("--end", required=True, help="ISO-8601 UTC, exclusive")
    replay.add_argument("--exchange", action="append", default=[], help="repeat for several (default: all)")
    replay.add_argument("--symbol", action="append", default=[], help="repeat for several (default: all)")
    replay.add_argument("--timeframe", default="1m")
    replay.add_argument("--chunk-hours", type=int, default=24)

    rebuild = sub.add_parser("rebuild", help="rebuild the marts of one market and/or time range, nothing else")
    rebuild.add_argument("--exchange", help="the market's exchange (default: every exchange)")
    rebuild.add_argument("--symbol", help="the market's symbol, e.g. BTC/USDT (default: every symbol)")
    rebuild.add_argument("--start", help="ISO-8601 UTC, inclusive, e.g. 2025-11-24T00:00:00Z (default: first candle)")
    rebuild.add_argument("--end", help="ISO-8601 UTC, exclusive (default: the last candle)")

    db = sub.add_parser("db", help="the warehouse schema's migrations: upgrade, current, downgrade")
    db_sub = db.add_subparsers(dest="action", required=True)
    up = db_sub.add_parser("upgrade", help="migrate to the newest revision (or --revision)")
    up.add_argument("--revision", default="head")
    db_sub.add_parser("current", help="the revision the warehouse is at")
    down = db_sub.add_parser("downgrade", help="migrate back to an older revision (an id, -1 or base)")
    down.add_argument("revision")
    sub.add_parser("apply-ddl", help="storage preparation's schema step (upgrade + idempotent files)")
    tokens = sub.add_parser("api-token", help="bearer tokens of the standalone market-data API")
    tokens_sub = tokens.add_subparsers(dest="action", required=True)
    tokens_sub.add_parser("create", help="create a token, printed once").add_argument("name")
    tokens_sub.add_parser("list", help="the tokens (never their value)")
    tokens_sub.add_parser("revoke", help="revoke every live token of a name").add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = make_parser().parse_args(argv)

    if args.cmd == "db":
        return _db(args)
    if args.cmd == "apply-ddl":
        from marketflow.schema import apply_ddl

        conn = _warehouse()
        try:
            apply_ddl(conn)
        finally:
            conn.close()
        return 0
    if args.cmd == "gaps":
        return _gaps(args)
    if args.cmd == "rebuild":
        return _rebuild(args)
    if args.cmd == "api-token":
        return _api_token(args)

    try:
        config = load_config(deep=args.cmd == "check-config")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.cmd == "pools":
        spec = {name: {"slots": slots, "include_deferred": False, "description": what}
                for name, (slots, what) in config.pools().items()}
        if args.format == "json":
            print(json.dumps(spec, indent=2))
        else:
            for name, pool in spec.items():
                print(f"{name}\t{pool['slots']}\t{pool['description']}")
    elif args.cmd == "check-config":
        from marketflow.exchange_facts import exchange_facts

        print(f"{config.source}: OK" + (f", {len(config.warnings)} warning(s)" if config.warnings else ""))
        for ex in config.exchanges:
            state = "enabled" if ex.enabled else "disabled"
            print(f"  {ex.name} ({ex.ccxt_id}, {state}, {ex.api_base_url or 'live'}): "
                  + ", ".join(f"{m.symbol} {'/'.join(m.timeframes)}" for m in ex.markets))
            if ex.enabled:
                print(f"    candles: {exchange_facts(ex.ccxt_id, ex.facts).describe()}")
        print(f"  pools: {', '.join(f'{name} ({slots})' for name, (slots, _) in config.pools().items())}; "
              f"give Airflow's executor at least {config.required_parallelism()} slots (core.parallelism)")
        queues = ",".join(["default", *sorted({ex.queue for ex in config.enabled_exchanges})])
        print(f"  Celery queues: {queues} (airflow celery worker --queues ...; workers behind one egress IP "
              f"share MARKETFLOW_EGRESS_ID)")
        for warning in config.warnings:  # what an exchange cannot give; the file is still valid
            print(f"warning: {warning}")
    elif args.cmd == "markets":
        return _markets(args, config)
    elif args.cmd == "replay":
        return _replay(args, config)
    return 0


def _api_token(args: argparse.Namespace) -> int:
    from marketflow.api.auth import new_token

    conn = _warehouse()
    try:
        with conn, conn.cursor() as cur:
            if args.action == "create":
                token, digest = new_token()
                cur.execute("INSERT INTO ops.api_tokens (name, token_sha256) VALUES (%s, %s)", (args.name, digest))
                print(token)
                print(f"token for {args.name!r} created: shown only now, store it (send it as "
                      f"'Authorization: Bearer <token>')", file=sys.stderr)
            elif args.action == "revoke":
                cur.execute("UPDATE ops.api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
                            (args.name,))
                if cur.rowcount == 0:
                    print(f"no live token named {args.name!r}; `marketflow api-token list` shows them", file=sys.stderr)
                    return 1
                print(f"revoked {cur.rowcount} token(s) named {args.name!r} (running APIs stop accepting them within "
                      f"30 s)")
            else:
                cur.execute("SELECT name, created_at, created_by, last_used_at, revoked_at FROM ops.api_tokens "
                            "ORDER BY name, created_at")
                for name, created, by, used, revoked in cur.fetchall():
                    print(f"{name}\tcreated {_iso(created)} by {by}\tlast used {_iso(used) if used else 'never'}"
                          f"\t{'revoked ' + _iso(revoked) if revoked else 'live'}")
    finally:
        conn.close()
    return 0


def _db(args: argparse.Namespace) -> int:
    from marketflow import schema

    conn = _warehouse()
    try:
        if args.action == "upgrade":
            applied = schema.upgrade(conn, revision=args.revision)
            print(f"warehouse schema upgraded through {', '.join(applied)}" if applied
                  else f"warehouse schema already at {args.revision}")
        elif args.action == "downgrade":
            undone = schema.downgrade(conn, args.revision)
            print(f"warehouse schema downgraded to {args.revision}" + (f" (undid {', '.join(undone)})" if undone
                                                                        else ": nothing to undo"))
        else:
            at = schema.current(conn)
            print(f"{at or 'none (a new database, or one from before migrations)'}; this release's newest: "
                  f"{schema.head()}")
    except schema.MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


def _markets(args: argparse.Namespace, config: MarketflowConfig) -> int:
    from marketflow import market_health

    conn = _warehouse(config)
    try:
        if args.action == "status":
            states = market_health.market_states(conn)
            for s in states:
                why = f"  {s.suspended_reason}" if s.status == "suspended" else (
                    f"  {s.consecutive_failures} failure(s) in a row, last {s.last_error_class}: "
                    f"{(s.last_error or '')[:160]}" if s.status == "failing" else "")
                print(f"{s.exchange} {s.symbol}\t{s.status}{why}")
            summary = market_health.state_summary(states)
            print(", ".join(f"{n} {state}" for state, n in summary.items()))
            return 0
        try:
            config.market(args.exchange, args.symbol)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
        if args.action == "resume":
            if market_health.resume(conn, args.exchange, args.symbol, by="cli"):
                print(f"{args.exchange} {args.symbol} resumed: it is called again from its next run")
                return 0
            print(f"{args.exchange} {args.symbol} is not suspended; nothing to resume", file=sys.stderr)
            return 1
        market_health.suspend(conn, config, args.exchange, args.symbol, args.reason)
        print(f"{args.exchange} {args.symbol} suspended: no more calls until it is resumed "
              f"(marketflow markets resume {args.exchange} {args.symbol}) or its entry changes")
        return 0
    finally:
        conn.close()


GAP_COLUMNS = ("exchange", "symbol", "timeframe", "gap_start", "gap_end", "missing_candles", "status", "task_status",
               "attempts", "last_error")


def _gaps(args: argparse.Namespace) -> int:
    import psycopg2

    conn = _warehouse()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT {', '.join(GAP_COLUMNS)} FROM marts.data_quality_gaps "
                "WHERE (%(all)s OR is_missing) AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s) "
                "AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s) ORDER BY exchange, symbol, timeframe, gap_start",
                {"all": args.all, "exchange": args.exchange, "symbol": args.symbol})
            rows = cur.fetchall()
    except psycopg2.errors.UndefinedTable:
        print("error: marts.data_quality_gaps does not exist yet: the hourly DAG (market_candles_1h) builds it "
              "with dbt; run it once, or `dbt build -s +data_quality_gaps` in dbt/", file=sys.stderr)
        return 2
    finally:
        conn.close()
    if not rows:
        print("no missing candles" + (" or repairs" if args.all else "") + " in marts.data_quality_gaps")
        return 0
    for row in rows[:args.limit]:
        gap = dict(zip(GAP_COLUMNS, row, strict=True))
        task = (f", repair {gap['task_status']} after {gap['attempts']} attempt(s)" if gap["task_status"] else "")
        error = f": {gap['last_error'][:160]}" if gap["last_error"] else ""
        print(f"{gap['exchange']} {gap['symbol']} {gap['timeframe']}  {_iso(gap['gap_start'])} .. "
              f"{_iso(gap['gap_end'])}  {gap['missing_candles']} missing  {gap['status']}{task}{error}")
    by_status: dict[str, tuple[int, int]] = {}
    for row in rows:
        gap = dict(zip(GAP_COLUMNS, row, strict=True))
        n, missing = by_status.get(gap["status"], (0, 0))
        by_status[gap["status"]] = (n + 1, missing + int(gap["missing_candles"] or 0))
    shown = f" (first {args.limit} listed)" if len(rows) > args.limit else ""
    print(f"{len(rows)} gap(s){shown}: " + ", ".join(f"{n} {status} ({missing} candles)"
                                                     for status, (n, missing) in sorted(by_status.items())))
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from marketflow import rebuild

    try:
        part = rebuild.Slice.parse(args.exchange, args.symbol, args.start, args.end)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    conn = _warehouse()
    try:
        deleted, seconds = rebuild.rebuild(conn, part, rebuild.dbt_env())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"rebuilt {part.describe()}: {sum(deleted.values())} rows deleted first "
          f"({', '.join(f'{k} {v}' for k, v in deleted.items() if v) or 'none held'}), dbt {seconds:.1f} s")
    return 0


def _iso(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ") if ts else "?"


def _replay(args: argparse.Namespace, config: MarketflowConfig) -> int:
    from marketflow.connections import raw_database
    from marketflow.errors import MarketsFailed
    from marketflow.pipeline import Attempt, backfill_unit, plan_backfill
    from marketflow.raw_store import RawStore

    unknown = [name for name in args.exchange if name not in {ex.name for ex in config.exchanges}]
    if unknown:
        print(f"error: no exchange {', '.join(unknown)} in {config.source}", file=sys.stderr)
        return 2
    params: dict[str, Any] = {"start": args.start, "end": args.end, "timeframe": args.timeframe,
                              "chunk_hours": args.chunk_hours, "symbols": args.symbol}
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attempt = Attempt(dag_id="marketflow_cli", run_id=f"replay__{started}", task_id="replay")
    raw = RawStore(raw_database())
    conn = _warehouse(config)
    failed = 0
    try:
        for ex in config.exchanges:
            if not ex.enabled or (args.exchange and ex.name not in args.exchange):
                continue
            try:
                units = plan_backfill(config, ex.name, params, max_tasks=1)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            for unit in units:
                try:
                    totals = backfill_unit(config, unit, raw, conn, attempt, from_raw=True)
                except MarketsFailed as exc:
                    failed += len(exc.failures)
                    print(f"{ex.name}: {exc}", file=sys.stderr)
                    continue
                for t in totals:
                    print(f"{t['exchange']} {t['symbol']}: {t['chunks']} chunk(s) replayed from raw, "
                          f"{t['inserted']} inserted, {t['updated']} updated, {t['unchanged']} unchanged, "
                          f"{t['rejected']} rejected; {t['present']} of {t['expected']} candles present"
                          + (f", {t['missing']} still missing (not in raw: `market_backfill` fetches them)"
                             if t["missing"] else ""))
    finally:
        conn.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
