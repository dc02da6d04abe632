"""Run the fault suite: ``python -m faults`` (``make faults``), from the repository root.

    python -m faults                    every case; prints the table, rewrites docs/faults.md
    python -m faults --quick            a smoke subset for development (make test runs every case)
    python -m faults --case http_5xx    named cases only (see --list)

Exits 1 when any case lost or duplicated a candle, got the pipeline banned, left a mart other than
the fault-free run's, failed a check (a planted fault that never fired, too) or errored.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from faults import REPO
from faults.cases import CASES, QUICK, by_slug
from faults.harness import (
    CLIENT_TIMEOUT_MS,
    EMULATOR_CONFIG,
    MARKETS,
    Case,
    CaseResult,
    Services,
    Suite,
    describe_retry_rules,
    start_mart_builders,
)
from faults.marts import MART_LINEAGE, MARTS

LOCAL = REPO / ".local" / "faults"
DOCS = REPO / "docs" / "faults.md"
COLUMNS = ("case", "faults injected", "candles expected", "landed", "lost", "duplicated", "bans",
           "marts as fault-free")


def marts_cell(result: CaseResult) -> str:
    return f"{len(MARTS) - len(result.marts_differ)}/{len(MARTS)}" if result.marts else "not built"


def table_rows(results: list[CaseResult]) -> list[tuple[str, ...]]:
    return [(r.name if r.ok else f"{r.name} (FAILED)", r.faults, str(r.expected), str(r.landed), str(r.lost),
             str(r.duplicated), str(r.bans), marts_cell(r)) for r in results]


def text_table(rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    numeric = [i >= 2 for i in range(len(columns))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric,
                                                                                   strict=True)).rstrip()

    return "\n".join([line(columns), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)])


def markdown_table(rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    align = ["---" if i < 2 else "---:" for i in range(len(columns))]
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|",
                      *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)])


def summary_line(results: list[CaseResult]) -> str:
    return (f"{len(results)} cases ({sum(not r.ok for r in results)} failed), {sum(r.lost for r in results)} lost, "
            f"{sum(r.duplicated for r in results)} duplicated, {sum(r.bans for r in results)} bans, "
            f"{sum(not r.marts_ok for r in results)} with marts other than the fault-free run's")


DOC = """\
# Fault-injection suite

`make faults` (`.local/venv/bin/python -m faults`) runs every fault below against the real pipeline
code and rewrites this file with the results. `make test` runs every case too
(`tests/faults/test_fault_suite.py`, one test per case, on the same runner). The cases are defined
in `faults/cases.py`, the machinery in `faults/harness.py`, the marts' side in `faults/marts.py`.

**The claim under test**: whatever a case does to the exchange, MongoDB, PostgreSQL or the worker,
once the run's retries are done staging holds exactly the candles of the fault-free run: the same
rows with the same values (read through the view `staging.ohlcv`, which decodes the loader's
physical table `staging.candle` and its keys; compared candle by candle, and by
`scripts.warehouse_checks.table_checksum` over every column but the lineage columns
`raw_payload_id`, `run_id`, `ingested_at`), none twice, and the pipeline's own pacing never got it
banned. And the marts dbt builds from that staging (`dbt run` of {marts}) equal the fault-free
run's: the same row count and checksum per mart, the columns that record when a row was written
({mart_lineage}) excluded.

## Results

Last full run: {when}, {n} cases in {seconds:.0f} s (building the marts: {dbt_seconds:.0f} s of it).

{table}

{summary}
{failures}
| case | tries beyond the first | in-task retries | case checks | seconds |
|---|---|---:|---|---:|
{details}
{celery}
Columns: *faults injected* = what the emulator's `/__admin/stats` counted as fired (`faults_fired`,
and the rate-limit answers it sent on its own: Binance's 429s for an exhausted weight budget, Bybit's
retCode 10006 over its per-second limit) plus the suite's own outages, kills and concurrent
runs; *candles expected* = the fault-free run's rows, what the exchange holds for the window (a
market it does not list, like the delisted case's, holds none and adds none); *landed* = candles
present with exactly the fault-free values; *lost* = expected - landed (missing or with other
values); *duplicated* = rows for a key twice, or for a key the fault-free run does not have; *bans* =
418s the emulator sent on its own because requests ignored a Retry-After, and Bybit's 403 IP blocks
for going over its request limit (injected 418s and 403s are faults, listed as such); *marts as
fault-free* = of the {n_marts} marts, those with the fault-free run's row count and checksum;
*in-task retries* = `ops.api_errors` rows with `will_retry`. A case
fails on any lost, duplicated or ban, a staging or mart checksum difference, a planted fault that
never fired (or a case no fault hit at all), a failed case check, or an error.

## The cases

{cases}

## How a case runs

* **Data**: the bundled real recordings (`include/sample_data`) and one synthetic Bybit market (the
  emulator's seeded candles, served newest first in pages of 1000 like Bybit), {markets}. The
  markets file the suite writes points every exchange at the emulator with `timeout_ms: {timeout}`.
  A case may write its own (`Case.extra_markets`, `Case.defaults`): a market the exchange does not list, a short
  `timeouts.db_lock`; the fault-free run stays the yardstick.
* **Services**: a dedicated exchange emulator (`exchange_emulator.testing.EmulatorProcess`, Binance
  weight budget {weight}/min, bans of {ban} s after {ban_after} strikes; Bybit's 600 requests per 5 s
  and 20 per second per endpoint, a block of {ban} s), PostgreSQL
  (`stack.PostgresServer`) and MongoDB (`stack.mongo_server`: mongod, else nx-27017), all started
  under `.local/faults/` on free ports and stopped by their recorded PIDs. Each case gets a fresh
  warehouse database (include/sql applied) and MongoDB database; the emulator's faults, statistics,
  weights and bans are reset.
* **Airflow's retries**: a run is the hourly DAG's `<exchange>.reconcile` task for each exchange,
  one after the other (`tasks.ingest.exchange_ingest`, whose body `pipeline.run_exchange_markets`
  extracts and loads every market of the exchange), retried as that task object of
  `dags/market_candles_1h.py` says: {retries} (a failed try is run again with `try_number + 1` on
  fresh connections; every warehouse session of the pipeline is opened as in production, with
  `connections.session_options`: `lock_timeout`, `statement_timeout` from `defaults.timeouts`). The
  policy (`errors.retry_policy`) fails a permanent error class without a retry, in the suite as in
  Airflow, and a later try re-runs only the markets an earlier one left failing. Inside each
  try the pipeline does its own retries (`exchanges.call_with_retries`: 4 attempts, backoff with
  jitter, Retry-After honoured through the shared rate-limit bucket in Postgres). Every try starts
  with nothing cached in the process (ccxt's market list included), as a new task process would;
  what task processes share through Postgres (`ops.market_lists`) stays.
* **Did the fault happen?** After the run the suite reads the emulator's fault book: a planted fault
  that did not fire all its `count` (or never, for one with a probability) fails the case, and so does
  a case that no fault hit at all. Drivers add their own evidence (the 429s for the weight budget,
  the task try that failed during an outage, the kill inside the open transaction).
* **Outages and kills** are aimed at a fixed point: MongoDB goes down as soon as the first page is
  in raw while the next one is in flight; PostgreSQL goes down, and the load worker is SIGKILLed,
  while the load's upsert transaction is open with its rows inserted (an `AFTER INSERT` statement
  trigger on `staging.candle`, the partitioned table the loader writes, created in the case's
  database, holds it open, only for sessions whose `application_name` the suite sets; a trigger on
  the `staging.ohlcv` view would never fire: the loader does not write through it). The service
  comes back once the try has failed; before the retry the case checks that staging holds exactly
  what it held before the interrupted try.
* **The marts**: once the case's runs are done, real dbt (`.local/dbt-venv`) runs {marts} and what
  they are built from in the case's warehouse. One dbt process parses the project once and serves
  every case (`faults/dbt_server.py`), so a case costs its models' run, about 2 s. The fault-free
  run's marts must hold a row per candle and per UTC bucket (counted from its candles), or the suite
  stops before the cases.

## Adding a case

Append a `Case` to `CASES` in `faults/cases.py`: emulator faults as fault specs
(`exchange_emulator/README.md`), `emulator_config` for the emulator's limits,
`extra_markets` / `defaults` for a markets file of its own, and for anything else a `drive(env)`
that runs the DAG (`DagRun(env, run_id).run()`, with the hooks
`overrides`, `before_try`, `after_failure`, `retry_gate` and `app_names`, keyed by exchange and try
number, to aim at one task try; `spawn_worker` for a try in a process of its own), records what it
did with `env.event(...)` and checks with `env.check(...)` that it hit the run (a fault planted
mid-run, e.g. once a request has arrived, goes through `env.emulator.add_faults` from a thread of
the drive). A case that stops a service or forks a worker is `exclusive`. The comparison with the
fault-free run (staging and marts) comes with it.
"""


# The CeleryExecutor cases (a worker lost, the broker restarted) run on a real Airflow deployment in
# `pytest -m scenario` (tests/airflow/test_celery_faults.py), not in this runner: their section of the
# file is kept as it is when the runner rewrites the rest.
CELERY_SECTION = ("<!-- celery cases: tests/airflow/test_celery_faults.py -->", "<!-- /celery cases -->")


def kept_celery_section(path: Path) -> str:
    """The CeleryExecutor cases' section of the current file (markers included), or nothing."""
    start, end = CELERY_SECTION
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text:
        return ""
    return "\n" + text[text.index(start):text.index(end) + len(end)] + "\n"


def write_docs(results: list[CaseResult], cases: list[Case], seconds: float, retries: str,
               path: Path = DOCS) -> None:
    details = "\n".join(
        f"| {r.name} | {r.tries} | {r.in_task_retries} | "
        + ("; ".join(f"{'ok' if c.ok else 'FAILED'}: {c.what}" for c in r.checks) or "-").replace("|", "\\|")
        + f" | {r.seconds:.1f} |" for r in results)
    windows = ", ".join(f"{ex} {sym} {start[:16].replace('T', ' ')} to {end[:16].replace('T', ' ')} UTC"
                        for ex, sym, start, end in MARKETS)
    failed = [r for r in results if not r.ok]
    failures = ("\nFailed:\n\n" + "\n".join(f"* **{r.name}**: " + "; ".join(r.problems()) for r in failed) + "\n"
                if failed else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    celery = kept_celery_section(path)
    path.write_text(DOC.format(failures=failures, celery=celery,
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), n=len(results), seconds=seconds,
        dbt_seconds=sum(r.dbt_seconds for r in results), marts=", ".join(f"`{m}`" for m in MARTS),
        n_marts=len(MARTS), mart_lineage=", ".join(f"`{c}`" for c in MART_LINEAGE),
        table=markdown_table(table_rows(results)), summary=summary_line(results),
        details=details, cases="\n".join(f"* **{c.name}** (`{c.slug}`): {c.summary}" for c in cases),
        markets=windows, timeout=CLIENT_TIMEOUT_MS, weight=EMULATOR_CONFIG["binance_weight_limit"],
        ban=EMULATOR_CONFIG["ban_seconds"], ban_after=EMULATOR_CONFIG["ban_after"],
        retries=retries))


def run_cases(suite: Suite, cases: list[Case], out=sys.stdout) -> list[CaseResult]:
    baseline = suite.run_baseline()
    marts = ", ".join(f"{m} {n}" for m, (n, _) in baseline.marts.items())
    print(f"fault-free run: {len(baseline.rows)} candles in {baseline.seconds:.1f}s "
          f"(staging checksum {baseline.state[1]}; marts: {marts})", file=out, flush=True)
    results = []
    for i, result in enumerate(suite.run_cases(cases), 1):  # each arrives once its marts are compared
        results.append(result)
        print(f"[{i:>2}/{len(cases)}] {result.name}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f}s, "
              f"marts {result.dbt_seconds:.1f}s ({result.tries})", file=out, flush=True)
        for problem in result.problems():
            print(f"        {problem}", file=out, flush=True)
    return results


def configure_logging(log_file: Path, verbose: bool) -> None:
    """Everything to ``log_file`` (and the console with -v). The pipeline imports Airflow on its first
    ccxt client (secrets masking), and importing Airflow configures logging: import it first, with its
    home under .local/ instead of ~/airflow, then take the handlers back."""
    os.environ.setdefault("AIRFLOW_HOME", str(LOCAL / "airflow-home"))
    with contextlib.suppress(ImportError):
        import airflow  # noqa: F401
    handlers: list[logging.Handler] = [logging.FileHandler(log_file, mode="w")]
    if verbose:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pymongo").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Airflow prints warnings itself; route them to the log as well


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=[], metavar="SLUG", help="run only this case (repeatable)")
    parser.add_argument("--quick", action="store_true", help="only a smoke subset, for development")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--tries", type=int, default=None,
                        help="task tries per task (default: the DAG task's retries + 1)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/faults.md")
    parser.add_argument("--keep", action="store_true", help="keep the services' data and the case databases")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to the console too")
    args = parser.parse_args(argv)

    cases = list(QUICK) if args.quick else by_slug(args.case) if args.case else list(CASES)
    if args.list:
        for case in CASES:
            print(f"{case.slug:<22} {case.name}{'  [quick]' if case.quick else ''}")
        return 0
    full = len(cases) == len(CASES)

    LOCAL.mkdir(parents=True, exist_ok=True)
    log_file = LOCAL / "faults.log"
    configure_logging(log_file, args.verbose)

    started = time.monotonic()
    workdir = LOCAL / f"run-{os.getpid()}"
    print(f"fault suite: {len(cases)} cases, log {log_file.relative_to(REPO)}", flush=True)
    with contextlib.ExitStack() as running:
        builders = start_mart_builders(workdir / "dbt")  # dbt starts up while the services do
        for builder in builders:
            running.callback(builder.close)
        services = running.enter_context(Services.start(workdir))
        services.owns_workdir = not args.keep
        suite = running.enter_context(Suite(services, tries=args.tries, keep=args.keep, marts=builders))
        results = run_cases(suite, cases)
    seconds = time.monotonic() - started

    rows = table_rows(results)
    print()
    print(text_table(rows))
    print()
    print(f"wall time {seconds:.0f}s" + (f"; data kept in {workdir}" if args.keep else ""))
    if full and not args.no_docs:
        write_docs(results, cases, seconds, describe_retry_rules(str(suite.config_path)))
        print(f"wrote {DOCS.relative_to(REPO)}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAILED {r.name}: " + "; ".join(r.problems()))
    print(summary_line(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
