"""The Prometheus alert rules: valid (promtool check), behaving as their promtool unit tests expect,
each one tested firing, each pointing at a runbook section that exists, and each reading only
metrics the collector exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from marketflow.metrics import AIRFLOW_LAST_SUCCESS, WAREHOUSE_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "include/prometheus/marketflow-alerts.yml"
RULE_TESTS = ROOT / "tests/prometheus/marketflow-alerts.test.yml"
RUNBOOK = ROOT / "docs/operations.md"
# Families the collector adds beside the query-backed ones (metrics.PipelineCollector.collect).
COLLECTOR_OWN = {"marketflow_metrics_query_errors", "marketflow_metrics_collect_seconds",
                 "marketflow_dbt_test_failing_rows"}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: `make install` installs Debian's prometheus package (scripts/system_packages.sh)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("MarketflowIngestionStalled", "marketflow_market_freshness_lag_seconds > 300",
     "marketflow_market_freshness_lag_seconds > 900"),
    ("MarketflowGapBacklogGrowing", "for: 2h", "for: 4h"),
])
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    """The promtool tests bite: the same tests fail against a copy of the rules with one threshold moved."""
    text = RULES.read_text()
    block = text[text.index(f"alert: {alert}"):]
    assert old in block, (alert, old)
    rules_dir = tmp_path / "include/prometheus"
    rules_dir.mkdir(parents=True)
    (rules_dir / RULES.name).write_text(text.replace(block, block.replace(old, new, 1)))
    tests_dir = tmp_path / "tests/prometheus"
    tests_dir.mkdir(parents=True)
    shutil.copy(RULE_TESTS, tests_dir / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tests_dir)
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_every_alert_is_tested_firing() -> None:
    fired = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {a["alert"] for a in alerts()} == fired


def test_every_alert_has_a_runbook_section() -> None:
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)}
    for alert in alerts():
        runbook = alert["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md" and anchor in headings, (alert["alert"], runbook, sorted(headings))
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]


def test_the_rules_read_only_metrics_the_collector_exposes() -> None:
    exposed = {f.name for f in WAREHOUSE_FAMILIES} | {AIRFLOW_LAST_SUCCESS.name} | COLLECTOR_OWN
    used = {name for alert in alerts() for name in re.findall(r"\bmarketflow_[a-z0-9_]+", alert["expr"])}
    assert used and used <= exposed, used - exposed
