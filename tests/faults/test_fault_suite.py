"""The fault suite (`make faults` runs every case and rewrites docs/faults.md; `make test` a subset: LONG_CASES).

Each case runs through the same runner as ``python -m faults`` (faults/harness.py) on services of its
own (PostgreSQL, MongoDB and an emulator: some cases stop them), and must land exactly the candles
of the fault-free run (none lost, none twice, no ban earned by the pipeline's own pacing), with
every fault it plants fired, and leave marts (ohlcv_1m and its rollups, built by real dbt) equal to
the fault-free run's. The cases run in order, each one's marts built while the next one runs; the
test of a case reports that case's result. Two yardstick tests show that the comparison fails
when candles are missing or one value differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.cases import BINANCE_KLINES, CASES
from faults.harness import Case, CaseEnv, CaseResult, DagRun, Services, Suite, TaskFailed, start_mart_builders
from faults.marts import MARTS

EXPECTED_CANDLES = 3480  # the windows: Binance 24 h (1440) + OKX 10 h (600) + Bybit 24 h (1440)


@pytest.fixture(scope="module")
def suite(test_root: Path) -> Iterator[Suite]:
    builders = start_mart_builders(test_root / "faults-dbt")  # dbt starts up while the services do
    try:
        with Services.start(test_root / "faults") as services, Suite(services, marts=builders) as suite:
            suite.run_baseline()
            yield suite
    finally:
        for builder in builders:
            builder.close()


class Results:
    """The results of the cases this session selected, run in order as their tests ask for them."""

    def __init__(self, suite: Suite, cases: list[Case]) -> None:
        self.pending = suite.run_cases(cases)
        self.done: dict[str, CaseResult] = {}

    def get(self, slug: str) -> CaseResult:
        while slug not in self.done:
            result = next(self.pending)
            self.done[result.slug] = result
        return self.done[slug]


@pytest.fixture(scope="module")
def results(suite: Suite, request: pytest.FixtureRequest) -> Results:
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and item.originalname == "test_fault_case"]
    return Results(suite, selected)


# The cases that spend the longest waiting out their faults (Retry-After pauses, bans, slow answers, the
# random mix) run in `make faults` (pytest -m scenario, and `python -m faults`); `make test` keeps one of
# each kind of fault: an HTTP error, bad bodies, bad rows, a stopped service, a killed worker, concurrency.
LONG_CASES = frozenset({"weight_budget_429", "http_418", "http_5xx", "timeout", "slow", "truncated_json_short",
                        "mixed"})


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.scenario) if c.slug in LONG_CASES else c
                                  for c in CASES], ids=lambda c: c.slug)
def test_fault_case(suite: Suite, results: Results, case: Case) -> None:
    result = results.get(case.slug)
    assert result.ok, f"{case.name} ({result.faults}): " + "; ".join(result.problems())
    assert (result.lost, result.duplicated, result.bans) == (0, 0, 0)
    assert result.landed == result.expected == suite.expected == EXPECTED_CANDLES
    assert suite.baseline is not None and result.marts == suite.baseline.marts
    assert sorted(result.marts) == sorted(MARTS)
    passed = {c.what for c in result.checks if c.ok}
    assert "faults hit the run" in passed
    if case.faults:
        assert "every planted fault fired" in passed


def test_a_fault_outlasting_the_retries_is_reported_as_lost(suite: Suite) -> None:
    """The yardstick itself: a ban longer than the pipeline waits in a task (MAX_IN_TASK_PAUSE_S)
    with a single task try leaves Binance's candles out, and the case says so, marts included."""
    case = Case("selftest_lossy", "418 with a 10-minute ban, one try", "",
                faults=({"kind": "http_418", **BINANCE_KLINES, "count": 1, "retry_after": 600},), tries=1)
    result = suite.run_case(case)
    assert not result.ok
    assert result.error is not None and "binance reconcile failed at try 1 of 1, not retried" in result.error
    assert suite.baseline is not None
    # Binance's day (1440 minutes) is lost; the other exchanges' candles all land.
    assert (result.lost, result.landed, result.duplicated) == (1440, len(suite.baseline.rows) - 1440, 0)
    assert not result.checksum_ok
    # Every mart loses Binance's rows and buckets (its 1d and 1w bucket included).
    assert all(result.marts[m][0] < suite.baseline.marts[m][0] for m in MARTS)
    assert [d.split(" ")[0] for d in result.marts_differ] == list(MARTS)


def test_one_changed_volume_is_caught_in_every_mart(suite: Suite) -> None:
    """The marts' checksum sees values, not only counts: one minute's volume one unit higher after a
    clean run leaves every row count as it was, and every mart (whose buckets sum it) different."""

    def drive(env: CaseEnv) -> None:
        DagRun(env, "selftest-volume-1").run()
        env.query("UPDATE staging.ohlcv SET volume = volume + 1 WHERE exchange = 'okx' "
                  "AND open_time = '2025-11-24T05:07:00Z' RETURNING 1")
        env.event("one staging volume changed")

    result = suite.run_case(Case("selftest_volume", "one volume changed", "", drive=drive))
    assert not result.ok
    assert (result.lost, result.wrong, result.duplicated) == (1, 1, 0)
    assert suite.baseline is not None
    assert {m: n for m, (n, _) in result.marts.items()} == {m: n for m, (n, _) in suite.baseline.marts.items()}
    assert result.marts_differ == [f"{m} ({result.marts[m][0]} rows vs {result.marts[m][0]}, other values)"
                                   for m in MARTS]


def _raises(exc: Exception):
    def try_task() -> None:
        raise exc

    return try_task


def test_the_suite_retries_each_task_as_the_dag_does(suite: Suite) -> None:
    """The suite's retries are the DAG task's (dags/market_candles_1h.py): a transient failure is tried
    retries + 1 = 4 times with Airflow's delays (20 s doubling, waited at RETRY_TIME_SCALE); a permanent
    one (the retry policy's FAIL) is not retried, in the suite as in Airflow."""
    import ccxt

    env = CaseEnv("retry_rules", "", "", "", suite.config_path, suite.config)
    run = DagRun(env, "retry-rules-1")
    waits: list[tuple[str, int, float]] = []
    run.retry_gate = lambda exchange, n: waits.append((exchange, n, run.task_rules(exchange).delay_before(n)))
    for n in range(1, 10):
        run.overrides[("binance", n)] = _raises(ccxt.NetworkError("binance GET /api/v3/klines: connection reset"))
        run.overrides[("okx", n)] = _raises(ccxt.BadSymbol("okx does not have market symbol LUNA/USDT"))
        run.overrides[("bybit", n)] = lambda: {"markets": 0}  # succeeds at once: no tries, no waits
    with pytest.raises(TaskFailed) as failed:
        run.run()
    assert [(r.exchange, r.try_number) for r in run.records] == (
        [("binance", n) for n in (1, 2, 3, 4)] + [("okx", 1), ("bybit", 1)])
    assert waits == [("binance", 2, 20.0), ("binance", 3, 40.0), ("binance", 4, 80.0)]
    assert "binance reconcile failed at try 4 of 4, not retried (all 4 tries used)" in str(failed.value)
    assert "okx reconcile failed at try 1 of 4, not retried (retry policy: bad_symbol is permanent" in str(failed.value)
