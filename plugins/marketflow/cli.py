"""Operator commands: ``python -m marketflow.cli <command>`` (PYTHONPATH=plugins).

    apply-ddl                           apply include/sql to the warehouse (idempotent)
    pools --format json                 the Airflow pools of every exchange (live, hourly, backfill), for
                                        `airflow pools import`
    check-config                        parse the markets file and list what it configures
    markets status                      every market's state: active, failing or suspended, and why
    markets resume <exchange> <symbol>  call a suspended market again from its next run
    markets suspend <exchange> <symbol> [--reason TEXT]
                                        stop calling a market until it is resumed or its entry changes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from marketflow.config import ConfigError, load_config


def warehouse_dsn() -> str:
    """The warehouse from the same settings Airflow and dbt use (connection URI, else MARKETFLOW_PG_*)."""
    uri = os.environ.get("AIRFLOW_CONN_MARKETFLOW_POSTGRES")
    if uri:
        return uri.replace("postgres://", "postgresql://", 1)
    env = os.environ
    missing = [k for k in ("MARKETFLOW_PG_HOST", "MARKETFLOW_PG_USER", "MARKETFLOW_PG_DATABASE") if k not in env]
    if missing:
        raise SystemExit(f"no warehouse configured: set AIRFLOW_CONN_MARKETFLOW_POSTGRES or {', '.join(missing)}")
    return (f"postgresql://{env['MARKETFLOW_PG_USER']}:{env.get('MARKETFLOW_PG_PASSWORD', '')}@"
            f"{env['MARKETFLOW_PG_HOST']}:{env.get('MARKETFLOW_PG_PORT', '5432')}/{env['MARKETFLOW_PG_DATABASE']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m marketflow.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("apply-ddl", help="apply include/sql to the warehouse")
    pools = sub.add_parser("pools", help="print one Airflow pool per exchange")
    pools.add_argument("--format", choices=["json", "text"], default="text")
    sub.add_parser("check-config", help="validate the markets file")
    markets = sub.add_parser("markets", help="market states: status, resume, suspend")
    markets_sub = markets.add_subparsers(dest="action", required=True)
    markets_sub.add_parser("status", help="every market's state (ops.market_health)")
    for action in ("resume", "suspend"):
        p = markets_sub.add_parser(action, help=f"{action} one market")
        p.add_argument("exchange")
        p.add_argument("symbol")
        if action == "suspend":
            p.add_argument("--reason", default="suspended by an operator")
    args = parser.parse_args(argv)

    try:
        config = load_config(deep=args.cmd == "check-config")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.cmd == "apply-ddl":
        import psycopg2

        from marketflow.schema import apply_ddl

        conn = psycopg2.connect(warehouse_dsn())
        try:
            apply_ddl(conn)
        finally:
            conn.close()
    elif args.cmd == "pools":
        spec = {name: {"slots": slots, "include_deferred": False, "description": what}
                for name, (slots, what) in config.pools().items()}
        if args.format == "json":
            print(json.dumps(spec, indent=2))
        else:
            for name, pool in spec.items():
                print(f"{name}\t{pool['slots']}\t{pool['description']}")
    elif args.cmd == "check-config":
        print(f"{config.source}: OK")
        for ex in config.exchanges:
            state = "enabled" if ex.enabled else "disabled"
            print(f"  {ex.name} ({ex.ccxt_id}, {state}, {ex.api_base_url or 'live'}): "
                  + ", ".join(f"{m.symbol} {'/'.join(m.timeframes)}" for m in ex.markets))
        print(f"  pools: {', '.join(f'{name} ({slots})' for name, (slots, _) in config.pools().items())}; "
              f"give Airflow's executor at least {config.required_parallelism()} slots (core.parallelism)")
    elif args.cmd == "markets":
        return _markets(args, config)
    return 0


def _markets(args: argparse.Namespace, config) -> int:
    import psycopg2

    from marketflow import market_health

    conn = psycopg2.connect(warehouse_dsn())
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
              f"(python -m marketflow.cli markets resume {args.exchange} {args.symbol}) or its entry changes")
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
