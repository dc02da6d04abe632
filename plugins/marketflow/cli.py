"""Operator commands: ``python -m marketflow.cli <command>`` (PYTHONPATH=plugins).

    apply-ddl            apply include/sql to the warehouse (idempotent)
    pools --format json  one Airflow pool per configured exchange, for `airflow pools import`
    check-config         parse the markets file and list what it configures
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
        spec = {ex.pool: {"slots": ex.pool_slots, "include_deferred": False,
                          "description": f"Concurrent API tasks against {ex.name} ({ex.ccxt_id})"}
                for ex in config.exchanges}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
