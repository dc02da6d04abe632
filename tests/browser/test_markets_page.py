"""The Markets page in a real Airflow API server, driven in Debian's Chromium (headless, by Playwright; no
browser download): log in through Airflow's login form, open Markets from the navigation, and check
what the chart drew against the bundled source CSV files (the independent oracle, aggregated here with
Decimal for the roll-up timeframes), the pickers, the quality and operations panels, the time a day of
1m candles takes to fetch and draw, and that nobody without Airflow's login gets the page or its data.

One warehouse (the bundled real candles, dbt-built marts, a few ops rows) and one api-server for all of it.
A screenshot of each state goes to .local/test-artifacts/screenshots/ (kept after the run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2
import pytest
from support.dbt_helpers import Candle, DbtRunner, copy_candles, dbt_env_for, read_sample_candles

from marketflow.api.app import UI_DIR
from marketflow.schema import apply_ddl
from scripts import stack
from scripts.stack import VENV_BIN

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / ".local" / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "x9-not-a-word"
# A hole planted in the okx market (not in the windows the chart is checked on): an open gap, a red hour.
HOLE = (datetime(2025, 11, 25, 10, 0, tzinfo=UTC), datetime(2025, 11, 25, 10, 5, tzinfo=UTC))
RENDER_BUDGET_MS = 1000  # issue 17: a day of 1m candles renders in under 1 s


@dataclass
class Site:
    base: str
    candles: list[Candle]
    dsn: str


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def site(pg_server: stack.PostgresServer, sample_data_dir: Path, test_root: Path) -> Iterator[Site]:
    assert (UI_DIR / "index.html").is_file(), "the Markets page is not built: run `make ui` (make test does)"
    work = test_root / "markets_page"
    home, run_dir = work / "airflow", work / "run"
    for path in (home, run_dir):
        path.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({stack.ADMIN_USER: PASSWORD}))
    metadata_db, warehouse_db = f"mf_page_airflow_{os.getpid()}", f"mf_page_{os.getpid()}"
    role = f"page_api_{os.getpid()}"
    for name in (metadata_db, warehouse_db):
        pg_server.create_database(name)
    port = stack.free_port()
    env = stack.airflow_env(home, pg_server, port, metadata_db)
    # Airflow's migration runs while dbt builds the marts (two processes, two cores).
    migrate = subprocess.Popen([str(VENV_BIN / "airflow"), "db", "migrate"], env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    candles = read_sample_candles(sample_data_dir)
    loaded = [c for c in candles if not (c.exchange == "okx" and HOLE[0] <= c.open_time < HOLE[1])]
    assert len(candles) - len(loaded) == 5
    dsn = pg_server.dsn(warehouse_db)
    with psycopg2.connect(dsn) as conn:
        apply_ddl(conn)
        copy_candles(conn, loaded)
    DbtRunner(dbt_env_for(dsn, work / "dbt"))("run")  # the marts; their dbt tests run in tests/dbt
    _ops_rows(dsn)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'page' IN ROLE marketflow_api")
    parts = urlsplit(dsn)
    api_dsn = urlunsplit(parts._replace(netloc=f"{role}:page@{parts.hostname}:{parts.port}"))
    _, stderr = migrate.communicate(timeout=600)
    assert migrate.returncode == 0, stderr[-3000:]
    server = stack.ManagedProcess("airflow-api", run_dir, [str(VENV_BIN / "airflow"), "api-server", "--port",
                                                           str(port)], port,
                                  env=env | {"MARKETFLOW_API_DATABASE": api_dsn}, ready_timeout=300)
    server.start()
    try:
        yield Site(f"http://127.0.0.1:{port}", candles, dsn)
    finally:
        # Airflow's api-server outwaits SIGTERM here (~30 s); it holds nothing to flush, so kill it sooner.
        server.stop(timeout=5)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA marts FROM {role}")
        pg_server.drop_database(warehouse_db)
        pg_server.drop_database(metadata_db)
        with psycopg2.connect(pg_server.dsn("postgres")) as conn, conn.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")


def _ops_rows(dsn: str) -> None:
    """What the pipeline's tasks write to ops.* (the operations marts are views over them): two runs, an
    error, and the last minutes of rate-limit use against binance's budget, the last one with a denial."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, exchange, symbol, try_number, outcome, "
            "error_class, candles, seconds) VALUES "
            "('market_candles_1m', 'page-run-1', 'binance.ingest', 'binance', 'ETH/USDT', 1, 'success', NULL, 60, 1),"
            "('market_candles_1m', 'page-run-1', 'okx.ingest', 'okx', 'BTC/USDT', 1, 'success', NULL, 60, 1),"
            "('market_candles_1m', 'page-run-2', 'okx.ingest', 'okx', 'BTC/USDT', 1, 'failed_transient', "
            "'network', NULL, 3)")
        cur.execute(
            "INSERT INTO ops.api_errors (exchange, symbol, error_class, exception, message, attempt, will_retry, "
            "run_id) VALUES ('okx', 'BTC/USDT', 'network', 'NetworkError', 'connection reset', 1, true, 'page-run-2'),"
            "('binance', 'ETH/USDT', 'rate_limit', 'RateLimitExceeded', '429 Too Many Requests', 1, true, "
            "'page-run-1')")
        cur.execute("INSERT INTO ops.rate_limit_buckets (exchange, capacity, refill_per_second, tokens) "
                    "VALUES ('binance', 1200, 20, 1200) ON CONFLICT DO NOTHING")
        cur.execute("INSERT INTO ops.rate_limit_metrics (exchange, minute, tokens_used, acquisitions, denied) "
                    "SELECT 'binance', date_trunc('minute', now()) - m * interval '1 minute', 300 + 40 * m, 20 + m, "
                    "CASE WHEN m = 0 THEN 2 ELSE 0 END FROM generate_series(0, 19) AS m")


# -- the oracle: the source files, rolled up with Decimal -------------------------------------------


def expected(candles: list[Candle], exchange: str, symbol: str, step: timedelta, start: datetime,
             end: datetime) -> list[tuple[str, Decimal, Decimal, Decimal, Decimal, Decimal]]:
    buckets: dict[datetime, list[Candle]] = {}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for c in candles:
        if (c.exchange, c.symbol) == (exchange, symbol) and start <= c.open_time < end:
            buckets.setdefault(epoch + (c.open_time - epoch) // step * step, []).append(c)
    rows = []
    for open_time, group in sorted(buckets.items()):
        group.sort(key=lambda c: c.open_time)
        rows.append((iso(open_time), Decimal(group[0].open), max(Decimal(c.high) for c in group),
                     min(Decimal(c.low) for c in group), Decimal(group[-1].close),
                     sum(Decimal(c.volume) for c in group)))
    return rows


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_chart(frame, want: list[tuple]) -> None:
    """The rows the page fetched (exact strings) and the bars it drew (numbers) against the oracle."""
    got = frame.evaluate("() => ({candles: window.__marketflow.candles, drawn: window.__marketflow.drawn})")
    assert len(got["candles"]) == len(got["drawn"]) == len(want)
    for row, bar, (open_time, o, h, low, c, v) in zip(got["candles"], got["drawn"], want, strict=True):
        assert row["open_time"] == open_time
        assert (Decimal(row["open"]), Decimal(row["high"]), Decimal(row["low"]), Decimal(row["close"]),
                Decimal(row["volume"])) == (o, h, low, c, v), open_time
        assert bar["time"] == datetime.fromisoformat(open_time).timestamp()
        assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (float(o), float(h), float(low), float(c))


def wait_loaded(frame, loads_before: int, panels_before: int | None = None) -> dict:
    # Polled by interval, not requestAnimationFrame (Playwright's default): Chromium may not paint an
    # iframe of a page it considers hidden, and a rAF poll then never runs.
    frame.wait_for_function("n => window.__marketflow && window.__marketflow.loads > n", arg=loads_before,
                            timeout=30_000, polling=100)
    if panels_before is not None:
        frame.wait_for_function("n => window.__marketflow.panels > n", arg=panels_before, timeout=30_000,
                                polling=100)
    state = frame.evaluate("() => ({loads: window.__marketflow.loads, panels: window.__marketflow.panels, "
                           "render: window.__marketflow.render, error: window.__marketflow.error})")
    assert state["error"] is None, state["error"]
    return state


def choose(frame, select: str, value: str) -> dict:
    """Pick ``value`` in the page's ``select`` picker and wait until the chart and panels reloaded."""
    loads, panels = counts(frame)
    frame.locator(select).select_option(value)
    return wait_loaded(frame, loads, panels)


def counts(frame) -> tuple[int, int]:
    state = frame.evaluate("() => [window.__marketflow.loads, window.__marketflow.panels]")
    return state[0], state[1]


def test_the_markets_page(site: Site, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base = site.base
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1500, "height": 1900})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            _run(page, base, site)
            # Logged out (the session cookie gone): the page and each of its API calls are refused.
            browser.clear_cookies()
            _refused(page, base)
        finally:
            browser.close()


def _run(page, base: str, site: Site) -> None:
    # Airflow's own login form.
    page.goto(base + "/", wait_until="commit")  # Airflow's script moves on to its login: see _arrives_at
    _arrives_at(page, re.compile(r"/auth/login"), timeout_ms=60_000)
    page.get_by_label(re.compile("username", re.I)).fill(stack.ADMIN_USER)
    page.get_by_label(re.compile("password", re.I)).fill(PASSWORD)
    page.get_by_role("button", name=re.compile("sign in|log in|login", re.I)).click()
    _arrives_at(page, re.compile(r"^(?!.*/auth/login)"), timeout_ms=60_000)

    # Markets in the navigation opens the page in Airflow's frame.
    page.get_by_role("link", name="Markets").click()
    _arrives_at(page, re.compile(r"/plugin/markets"), timeout_ms=30_000)
    frame = page.wait_for_selector('iframe[src*="/marketflow/ui/"]', timeout=30_000).content_frame()
    assert frame is not None
    state = wait_loaded(frame, 0, 0)

    # The default view: the first market (binance ETH/USDT), 1h, the day that ends at its last candle.
    candles = site.candles
    day = datetime(2022, 8, 15, tzinfo=UTC)
    assert {k: state["render"][k] for k in ("exchange", "symbol", "timeframe", "start", "end", "candles")} == {
        "exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1h", "start": iso(day),
        "end": iso(day + timedelta(days=1)), "candles": 24}
    check_chart(frame, expected(candles, "binance", "ETH/USDT", timedelta(hours=1), day, day + timedelta(days=1)))
    reference_ms = state["render"]["ms"]
    _panels_filled(frame, "binance")
    _shot(page, "01-airflow-nav-markets-binance-1h-day")

    # 1m: the whole day of the source file, candle for candle, fetched and drawn within the budget.
    state = choose(frame, "#timeframe", "1m")
    check_chart(frame, expected(candles, "binance", "ETH/USDT", timedelta(minutes=1), day, day + timedelta(days=1)))
    renders = [state["render"]]
    assert renders[0]["candles"] == 1440
    # The same day twice more (Latest reloads it): the best of three, since the 2-core machine is shared.
    for _ in range(2):
        loads, panels = counts(frame)
        frame.locator("#to-latest").click()
        renders.append(wait_loaded(frame, loads, panels)["render"])
    assert [r["candles"] for r in renders] == [1440] * 3
    best = min(renders, key=lambda r: r["ms"])
    print(f"\nMarkets page: a day of 1m candles (1440) fetched and drawn in {best['ms']:.0f} ms, best of "
          f"{[round(r['ms']) for r in renders]} (fetch {best['fetchMs']:.0f} ms, draw {best['drawMs']:.0f} ms; "
          f"budget {RENDER_BUDGET_MS} ms); the reference, 24 1h candles: {reference_ms:.0f} ms "
          f"(ratio {best['ms'] / reference_ms:.2f}); load average {os.getloadavg()[0]:.1f}")
    assert best["ms"] < RENDER_BUDGET_MS, renders  # the 1 s (the best of three: the 2-core machine is shared)
    _shot(page, "02-binance-1m-day")

    # Range and end picked: 6 hours of 5m candles ending 2022-08-14 12:00.
    choose(frame, "#timeframe", "5m")
    choose(frame, "#range", "21600")
    loads, panels = counts(frame)
    frame.locator("#end").fill("2022-08-14T12:00")
    frame.locator("#end").dispatch_event("change")
    state = wait_loaded(frame, loads, panels)
    end = datetime(2022, 8, 14, 12, tzinfo=UTC)
    assert (state["render"]["timeframe"], state["render"]["start"], state["render"]["end"]) == (
        "5m", iso(end - timedelta(hours=6)), iso(end))
    check_chart(frame, expected(candles, "binance", "ETH/USDT", timedelta(minutes=5), end - timedelta(hours=6), end))
    _shot(page, "03-binance-5m-6h-to-2022-08-14T12")

    # The other exchange: okx BTC/USDT, 15m over its last 3 days: the planted hole is an open gap and a
    # red hour in the heat map, and the 10:00 candle of 15m is drawn as incomplete.
    choose(frame, "#exchange", "okx")
    choose(frame, "#timeframe", "15m")
    state = choose(frame, "#range", "259200")
    last = max(c.open_time for c in candles if c.exchange == "okx") + timedelta(minutes=1)
    check_chart(frame, expected([c for c in candles if not HOLE[0] <= c.open_time < HOLE[1]], "okx", "BTC/USDT",
                                timedelta(minutes=15), last - timedelta(days=3), last))
    incomplete = frame.evaluate("() => window.__marketflow.candles.filter(c => !c.is_complete).map(c => c.open_time)")
    assert iso(HOLE[0]) in incomplete
    gap_cells = frame.locator("#gaps tbody tr").first.locator("td").all_inner_texts()
    assert gap_cells[:3] == ["2025-11-25 10:00:00", "2025-11-25 10:05:00", "5"], gap_cells
    hole_hour = frame.locator("#heatmap .cell[data-score]").evaluate_all(
        "cells => cells.map(c => [c.title.slice(0, 16), c.dataset.score]).filter(([t, s]) => s !== '100.00')")
    assert hole_hour and hole_hour[0][0] == "2025-11-25 10:00", hole_hour
    _panels_filled(frame, "okx")
    _shot(page, "04-okx-15m-3d-quality-and-operations")


def _panels_filled(frame, exchange: str) -> None:
    """Latest prices with staleness, an hourly heat map, rate-limit bars against the budget, errors and runs."""
    latest = [row.locator("td").all_inner_texts() for row in frame.locator("#latest tbody tr").all()]
    assert [(r[0], r[1]) for r in latest] == [("binance", "ETH/USDT"), ("okx", "BTC/USDT")]
    assert all(r[5].endswith(" h") for r in latest)  # days old: the bundled data are history
    assert frame.locator("#latest td.stale").count() == 2
    assert frame.locator("#heatmap .cell[data-score]").count() >= 24
    bars = frame.locator('#rate-limit .rl-row[data-exchange="binance"] .bars div')
    assert bars.count() == 60
    assert frame.locator('#rate-limit .rl-row[data-exchange="binance"] .bars div.over').count() >= 1  # the denial
    assert "/1200" in frame.locator('#rate-limit .rl-row[data-exchange="binance"]').inner_text()
    errors = [row.locator("td").all_inner_texts()[:3] for row in frame.locator("#errors tbody tr").all()]
    assert sorted(errors) == [["binance", "rate_limit", "1"], ["okx", "network", "1"]]
    runs = [row.locator("td").all_inner_texts()[1] for row in frame.locator("#runs tbody tr").all()]
    assert {"page-run-1", "page-run-2"} <= set(runs)


def _arrives_at(page, url: re.Pattern[str], timeout_ms: int) -> None:
    # Airflow's UI sends the browser on by script (to its login, or back after it), and the main frame
    # was seen to navigate twice in a row to the same login URL. page.wait_for_url follows one
    # navigation; it failed in CI (2026-12-05) with ERR_ABORTED, most likely that navigation superseded
    # by the next (not reproduced here). expect() polls the page's URL and only cares where the browser
    # ends up. For the same reason the page.goto() calls that Airflow redirects wait for the commit of
    # the first page, not its load.
    from playwright.sync_api import expect

    expect(page).to_have_url(url, timeout=timeout_ms)


def _refused(page, base: str) -> None:
    # The page itself: a 401 page naming Airflow's login, not the Markets page.
    response = page.goto(base + "/marketflow/ui/")
    assert response is not None and response.status == 401
    assert "Not logged in" in page.inner_text("body") and "Airflow" in page.inner_text("body")
    _shot(page, "05-logged-out-page-refused")
    # Its assets and each API call it makes, from the browser without the session cookie.
    assert page.evaluate("""async (paths) => Promise.all(paths.map(async p => (await fetch(p)).status))""",
                         [f"{base}/marketflow/{p}" for p in (
                             "ui/index.html", "markets", "latest", "ohlcv?exchange=binance&symbol=ETH/USDT",
                             "indicators?exchange=binance&symbol=ETH/USDT", "quality/summary", "quality/gaps",
                             "ops/rate-limit", "ops/errors", "ops/runs")]) == [401] * 10
    assert httpx.get(f"{base}/marketflow/ui/", timeout=30).status_code == 401
    # The Airflow frame itself, logged out: Airflow sends the browser to its login.
    page.goto(base + "/plugin/markets", wait_until="commit")
    _arrives_at(page, re.compile(r"/auth/login"), timeout_ms=60_000)
    page.get_by_label(re.compile("password", re.I)).wait_for()
    _shot(page, "06-logged-out-nav-goes-to-airflow-login")
