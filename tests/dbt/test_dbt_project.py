"""The dbt project's shape, checked from `dbt parse` alone (no database: cosmos parses the same way)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from support.dbt_helpers import DBT_EXECUTABLE, DBT_PROJECT_DIR, DbtRunner, dbt_env_for

EXPECTED_MODELS = {
    # name: (schema, materialization)
    "int_dq_candle_hours_1m": ("dbt_intermediate", "incremental"),
    "int_dq_expected_ranges": ("dbt_intermediate", "table"),
    "int_dq_gap_holes": ("dbt_intermediate", "incremental"),
    "int_dq_hourly_1m": ("dbt_intermediate", "incremental"),
    "int_indicator_functions": ("dbt_intermediate", "view"),
    "int_latest_candle_1m": ("dbt_intermediate", "incremental"),
    "int_markets": ("dbt_intermediate", "table"),
    "int_ohlcv_1m_days": ("dbt_intermediate", "incremental"),
    "stg_api_errors": ("dbt_staging", "view"),
    "stg_market_health": ("dbt_staging", "view"),
    "stg_backfill_tasks": ("dbt_staging", "view"),
    "stg_market_config": ("dbt_staging", "view"),
    "stg_ohlcv": ("dbt_staging", "view"),
    "stg_ohlcv_anomalies": ("dbt_staging", "view"),
    "stg_rate_limit_metrics": ("dbt_staging", "view"),
    "stg_market_task_outcomes": ("dbt_staging", "view"),
    "stg_ticker": ("dbt_staging", "view"),
    "stg_ticker_latest": ("dbt_staging", "view"),
    "api_errors": ("marts", "view"),
    "data_quality_flagged_candles": ("marts", "view"),
    "data_quality_gaps": ("marts", "table"),
    "data_quality_summary": ("marts", "incremental"),
    "indicators_15m": ("marts", "view"),  # of the indicator columns on ohlcv_15m's rows
    "indicators_1d": ("marts", "view"),  # of the indicator columns on ohlcv_1d's rows
    "indicators_1h": ("marts", "view"),  # of the indicator columns on ohlcv_1h's rows
    "candles_1m": ("marts", "incremental"),  # the 1m candles and their indicators, keyed by market_id
    "candles_1m_markets": ("marts", "view"),  # candles_1m's market ids, for readers of the marts
    "indicators_1m": ("marts", "view"),  # of the indicator columns on candles_1m's rows
    "indicators_1w": ("marts", "view"),  # of the indicator columns on ohlcv_1w's rows
    "indicators_5m": ("marts", "view"),  # of the indicator columns on ohlcv_5m's rows
    "latest_price": ("marts", "view"),
    "markets": ("marts", "view"),
    "ohlcv_15m": ("marts", "incremental"),
    "ohlcv_1d": ("marts", "incremental"),
    "ohlcv_1h": ("marts", "incremental"),
    "ohlcv_1m": ("marts", "view"),  # of the candle columns of candles_1m, with the market's names
    "ohlcv_1m_lineage": ("marts", "view"),  # ohlcv_1m's lineage: the staging row of the same key
    "ohlcv_1w": ("marts", "incremental"),
    "ohlcv_5m": ("marts", "incremental"),
    "rate_limit_usage": ("marts", "view"),
    "pipeline_runs": ("marts", "view"),
}


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """manifest.json from `dbt parse` with the profile pointing at a port nothing listens on."""
    work = tmp_path_factory.mktemp("dbt-parse")
    env = dbt_env_for(f"postgresql://nobody:secret@127.0.0.1:{_unused_port()}/nowhere", work)
    assert Path(DBT_EXECUTABLE).exists(), f"dbt executable not found: {DBT_EXECUTABLE} (make install creates it)"
    DbtRunner(env)("parse", "--no-partial-parse")
    return json.loads((work / "target" / "manifest.json").read_text())


def _nodes(manifest: dict, resource_type: str) -> dict[str, dict]:
    return {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == resource_type}


def test_no_packages_needed() -> None:
    # dbt deps cannot reach the hub offline (and in the image build): everything is in-project.
    assert not (DBT_PROJECT_DIR / "packages.yml").exists()
    assert not (DBT_PROJECT_DIR / "dependencies.yml").exists()


def test_models_schemas_and_materializations(manifest: dict) -> None:
    models = _nodes(manifest, "model")
    assert set(models) == set(EXPECTED_MODELS)
    for name, (schema, materialized) in EXPECTED_MODELS.items():
        assert models[name]["schema"] == schema, name
        assert models[name]["config"]["materialized"] == materialized, name


def test_candles_1m_is_an_incremental_merge_on_the_candle_key(manifest: dict) -> None:
    config = _nodes(manifest, "model")["candles_1m"]["config"]
    assert config["incremental_strategy"] == "merge"
    assert config["unique_key"] == ["market_id", "open_time"]
    indexes = {(tuple(i["columns"]), bool(i.get("unique"))) for i in config["indexes"]}
    assert (("market_id", "open_time desc"), True) in indexes
    assert (("ingested_at",), False) in indexes


def test_every_model_and_column_is_described(manifest: dict) -> None:
    for name, node in _nodes(manifest, "model").items():
        assert node["description"].strip(), f"{name} has no description"
        assert node["columns"], f"{name} documents no columns"
        for column, spec in node["columns"].items():
            assert spec["description"].strip(), f"{name}.{column} has no description"


def test_sources_have_described_columns_and_freshness(manifest: dict) -> None:
    sources = {(s["source_name"], s["name"]): s for s in manifest["sources"].values()}
    assert {name for (group, name) in sources if group == "staging"} >= {"candle", "market", "ticker", "ohlcv_rejects"}
    assert {name for (group, name) in sources if group == "ops"} >= {"market_config", "backfill_tasks", "api_errors",
                                                                       "rate_limit_metrics", "rate_limit_buckets"}
    for (group, name), source in sources.items():
        assert source["schema"] == group and source["description"].strip(), name
        assert all(c["description"].strip() for c in source["columns"].values()), name
        if group == "staging":  # the pipeline's data tables list every column
            assert source["columns"], name
    for name in ("candle", "ticker"):
        assert sources[("staging", name)]["loaded_at_field"] == "ingested_at"
        freshness = sources[("staging", name)]["freshness"]
        assert freshness["warn_after"]["count"] and freshness["error_after"]["count"], name


def test_generic_tests_are_attached(manifest: dict) -> None:
    tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test"]
    by_model: dict[str, set[str]] = {}
    for t in tests:
        name = t["test_metadata"]["name"]
        for dep in t["depends_on"]["nodes"]:
            by_model.setdefault(dep.split(".")[-1], set()).add(name)
    assert {
        "ohlcv_consistency",
        "relationships_multi_column",
        "not_null_columns",
    } <= (by_model["ohlcv_1m"])
    assert {"unique_key_index", "not_null_columns"} <= by_model["candles_1m"]
    for model in ("markets", "latest_price"):
        assert "unique_combination_of_columns" in by_model[model], model
    assert "unique_key_index" in by_model["int_markets"]
    # one NULL check per model, not one per column
    nulls = [t for t in tests if t["test_metadata"]["name"] in ("not_null", "not_null_columns")]
    per_model = [t["depends_on"]["nodes"][0] for t in nulls]
    assert len(per_model) == len(set(per_model)), "a model has more than one NULL check"
    ohlcv = next(t for t in nulls if t["depends_on"]["nodes"][0].endswith(".ohlcv_1m"))
    assert {"exchange", "symbol", "open_time", "close", "volume", "ingested_at"} <= set(
        ohlcv["test_metadata"]["kwargs"]["columns"])


def test_every_unique_index_is_the_key_a_test_checks(manifest: dict) -> None:
    """A model with a unique index is checked by unique_key_index on exactly the index's columns
    (a scan for duplicates could never fail there); every other model keeps the scan."""
    models = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    checks: dict[str, dict[str, set[frozenset[str]]]] = {}
    for t in manifest["nodes"].values():
        if t["resource_type"] == "test" and t.get("test_metadata"):
            kwargs = t["test_metadata"]["kwargs"]
            columns = kwargs.get("columns") or kwargs.get("combination_of_columns") or []
            model = t["depends_on"]["nodes"][0].split(".")[-1]
            checks.setdefault(model, {}).setdefault(t["test_metadata"]["name"], set()).add(frozenset(columns))
    indexed = {
        name: {frozenset(c.split()[0] for c in ix["columns"]) for ix in node["config"].get("indexes") or []
               if ix.get("unique")}
        for name, node in models.items()
    }
    assert {name for name, keys in indexed.items() if keys} >= {"candles_1m", "ohlcv_5m", "ohlcv_1w",
                                                               "data_quality_gaps", "data_quality_summary",
                                                               "int_markets", "int_dq_gap_holes"}
    for name, keys in indexed.items():
        by_index = checks.get(name, {}).get("unique_key_index", set())
        assert by_index == keys, f"{name}: unique indexes {keys}, unique_key_index tests {by_index}"
        if keys:
            assert "unique_combination_of_columns" not in checks.get(name, {}), name
    unindexed_keyed = {"markets", "latest_price", "data_quality_flagged_candles"}
    for name in unindexed_keyed:
        assert not indexed[name] and checks[name]["unique_combination_of_columns"], name


def test_data_tests_on_growing_tables_read_a_window(manifest: dict) -> None:
    """Every data test of an incremental model whose rows grow with history (a row per market and
    minute, bucket or hour) reads the data-test window (a `where` on an indexed ingestion column),
    the catalog, or windows itself: the hourly build's tests cost what the new data costs (issue
    16, item 3; bench figure 9). int_dq_gap_holes (a row per hole and series) and
    int_latest_candle_1m (a row per market) do not grow with history and are read whole."""
    models = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    growing = {name for name, n in models.items() if n["config"]["materialized"] == "incremental"} - {
        "int_dq_gap_holes", "int_latest_candle_1m"}
    reads_no_rows_or_windows_itself = {"unique_key_index", "indicator_matches_candles"}
    unbounded = []
    for t in manifest["nodes"].values():
        if t["resource_type"] != "test" or not t.get("test_metadata"):
            continue
        model = t["depends_on"]["nodes"][0].split(".")[-1]
        name = t["test_metadata"]["name"]
        if model in growing and name not in reads_no_rows_or_windows_itself and not (t["config"].get("where") or ""):
            unbounded.append(f"{model}: {name}")
    # ohlcv_1m and indicators_1m are views over candles_1m (the merged row): their tests read its window
    assert growing >= {"candles_1m", "int_dq_candle_hours_1m", "data_quality_summary"}
    assert not unbounded, f"data tests scanning a whole growing table: {sorted(unbounded)}"


def test_incremental_models_do_not_analyze_their_whole_table_every_run(manifest: dict) -> None:
    """An incremental model's post-hook ANALYZE is bounded: `analyze_when_changed()` (only when the
    row count moved by a share, macros/analyze_when_changed.sql) or, for the month-partitioned
    tables, `ops.analyze_recent_partitions` (the newest months). A bare `analyze {{ this }}` after
    every run samples up to 30,000 pages of the table, a cost that grew with history in the hourly
    build (issue 16, item 3; bench figure 9). Tables rebuilt whole every run (materialized table)
    keep their plain ANALYZE: they are new tables each time."""
    bounded = ("analyze_when_changed()", "analyze_recent_partitions(")
    unbounded, analyzed = [], set()
    for node in manifest["nodes"].values():
        if node["resource_type"] != "model" or node["config"]["materialized"] != "incremental":
            continue
        for hook in node["config"].get("post-hook") or []:
            sql = hook["sql"].lower()
            if "analyze" not in sql:
                continue
            analyzed.add(node["name"])
            if not any(b in sql for b in bounded):
                unbounded.append(f"{node['name']}: {hook['sql']}")
    assert analyzed >= {"candles_1m", "ohlcv_5m", "ohlcv_15m", "ohlcv_1h", "ohlcv_1w",
                        "int_dq_candle_hours_1m", "data_quality_summary"}
    assert not unbounded, f"incremental models analyzing their whole table every run: {unbounded}"


def test_unit_tests_and_exposure(manifest: dict) -> None:
    unit_tests = {u["name"]: u for u in manifest["unit_tests"].values()}
    models_tested = {u["model"] for u in unit_tests.values()}
    assert {"candles_1m", "ohlcv_1m_lineage", "latest_price", "markets", "int_markets"} <= models_tested
    assert any(
        u["model"] == "candles_1m" and u["overrides"]["macros"].get("is_incremental")
        for u in unit_tests.values()
    )
    exposures = list(manifest["exposures"].values())
    assert exposures, "no exposure declared"
    assert {"model.marketflow.ohlcv_1m", "model.marketflow.latest_price"} <= set(
        exposures[0]["depends_on"]["nodes"]
    )
