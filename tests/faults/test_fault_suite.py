"""The fault suite, every case (``make faults`` runs the same cases and rewrites docs/faults.md).

Each case runs through the same runner as ``python -m faults`` (faults/harness.py) on services of its
own (PostgreSQL, MongoDB and an emulator: some cases stop them), and must land exactly the candles
of the fault-free run (none lost, none twice, no ban earned by the pipeline's own pacing), with
every fault it plants fired, and leave marts (ohlcv_1m and its rollups, built by real dbt) equal to
the fault-free run's. The cases run in order, each one's marts built while the next one runs; the
test of a case reports that case's result. Two yardstick tests show that the comparison fails
when candles are missing or one value differs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The suite lives in faults/ at the repo root; the root itself (dags/, dbt/, ...) stays off sys.path.
sys.path.insert(0, str(REPO))
try:
    from faults.cases import BINANCE_KLINES, CASES
    from faults.harness import Case, CaseEnv, CaseResult, DagRun, Services, Suite, start_mart_builders
    from faults.marts import MARTS
finally:
    sys.path.remove(str(REPO))

EXPECTED_CANDLES = 2040  # the recordings' windows: Binance 24 h (1440) + OKX 10 h (600)


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


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
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
    assert result.error is not None and "binance reconcile failed all 1 tries" in result.error
    assert (result.lost, result.landed, result.duplicated) == (1440, 600, 0)
    assert not result.checksum_ok
    # Every mart loses Binance's rows and buckets (its 1d and 1w bucket included).
    assert suite.baseline is not None
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
