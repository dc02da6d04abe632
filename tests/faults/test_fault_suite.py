"""The quick subset of the fault suite (``make faults`` runs all of it; see docs/faults.md).

Each case runs through the same runner as ``python -m faults`` (faults/harness.py), on this test
session's PostgreSQL and MongoDB and an emulator of its own, and must land exactly the candles of
the fault-free run: none lost, none twice, no ban earned by the pipeline's own pacing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The suite lives in faults/ at the repo root; the root itself (dags/, dbt/, ...) stays off sys.path.
sys.path.insert(0, str(REPO))
try:
    from faults.cases import BINANCE_KLINES, QUICK
    from faults.harness import Case, Services, Suite
finally:
    sys.path.remove(str(REPO))


@pytest.fixture(scope="module")
def suite(pg_server, mongo_uri: str, test_root: Path):
    services = Services.attach(pg_server, mongo_uri, test_root / "faults")
    try:
        suite = Suite(services)
        suite.run_baseline()
        yield suite
    finally:
        services.close()


@pytest.mark.parametrize("case", QUICK, ids=lambda c: c.slug)
def test_fault_loses_and_doubles_nothing(suite: Suite, case: Case) -> None:
    result = suite.run_case(case)
    assert result.ok, f"{case.name} ({result.faults}): " + "; ".join(result.problems())
    assert (result.lost, result.duplicated, result.bans) == (0, 0, 0)
    assert result.landed == result.expected == suite.expected == 2040
    assert result.checks, "every quick case checks that its faults actually hit the run"


def test_a_fault_outlasting_the_retries_is_reported_as_lost(suite: Suite) -> None:
    """The yardstick itself: a ban longer than the pipeline waits in a task (MAX_IN_TASK_PAUSE_S)
    with a single task try leaves Binance's candles out, and the case says so."""
    case = Case("selftest_lossy", "418 with a 10-minute ban, one try", "",
                faults=({"kind": "http_418", **BINANCE_KLINES, "count": 1, "retry_after": 600},), tries=1)
    result = suite.run_case(case)
    assert not result.ok
    assert result.error is not None and "binance extract failed all 1 tries" in result.error
    assert (result.lost, result.landed, result.duplicated) == (1440, 600, 0)
    assert not result.checksum_ok
