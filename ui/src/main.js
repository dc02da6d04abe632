// The Markets page: reads the market-data API it is served by (../ relative to <prefix>/ui/) with the
// browser's Airflow session cookie. Prices arrive as exact decimal strings; they become numbers only
// for drawing (the table cells show the strings as they came).
import { CandlestickSeries, createChart, CrosshairMode, HistogramSeries, LineSeries } from "lightweight-charts";
import "./style.css";

const API = new URL("../", window.location.href);
const $ = (id) => document.getElementById(id);
const MINUTE = 60;
const STALE_AFTER_S = 300; // the API's default max staleness (GET /health)
const HEATMAP_MAX_DAYS = 14;
const UP = "#16a34a";
const DOWN = "#dc2626";
const INCOMPLETE = "#9ca3af";
const OVERLAYS = [
  ["sma_20", "SMA 20", "#f59e0b"],
  ["sma_50", "SMA 50", "#8b5cf6"],
  ["ema_12", "EMA 12", "#0ea5e9"],
  ["ema_26", "EMA 26", "#ec4899"],
];

// What the page drew, for the browser tests (and for anyone curious in the console).
const state = (window.__marketflow = { loads: 0, panels: 0, renders: [], candles: [], drawn: [], error: null });

class HttpError extends Error {
  constructor(status, message, parameter = null) {
    super(message);
    this.status = status;
    this.parameter = parameter;
  }
}

async function get(path, params = {}) {
  const url = new URL(path, API);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(key, value);
  }
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let parameter = null;
    try {
      const error = (await response.json()).error;
      message = `${error.message} (fix: ${error.fix})`;
      parameter = error.parameter;
    } catch {
      // not the API's JSON error: keep the status line
    }
    throw new HttpError(response.status, message, parameter);
  }
  return response.json();
}

const STEP_S = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400, "1w": 604800 };

// Every page of a cursor-paged series. The whole range in one page when the API's row cap allows (a day
// of 1m is one request, not two); above the cap the API says so (400 on limit) and its default page
// size is used instead.
async function getAll(path, params, key) {
  const rows = [];
  let cursor = null;
  let limit = Math.min(5000, Math.ceil((Date.parse(params.end) - Date.parse(params.start)) / 1000
    / STEP_S[params.timeframe]) + 1);
  for (;;) {
    let body;
    try {
      body = await get(path, { ...params, limit, cursor });
    } catch (error) {
      if (error.status !== 400 || error.parameter !== "limit" || limit === null) throw error;
      limit = null; // above this API's row cap: its default page size
      continue;
    }
    for (const row of body[key]) rows.push(row);
    cursor = body.next_cursor;
    if (!cursor) return rows;
  }
}

const seconds = (iso) => Date.parse(iso) / 1000;
const utcText = (iso) => (iso ? iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1") : "");
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));

// The price axis shows as many decimals as the prices have (the marts pad them with zeros).
function decimals(values) {
  let most = 0;
  for (const value of values) {
    const dot = value.indexOf(".");
    if (dot >= 0) most = Math.max(most, value.replace(/0+$/, "").length - dot - 1);
  }
  return Math.min(most, 10);
}

function humanSeconds(total) {
  const s = Math.max(0, Math.round(total));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fillTable(id, rows, cells, empty) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = $(id).tHead.rows[0].cells.length;
    td.textContent = empty;
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [text, className, title] of cells(row)) {
      const td = tr.insertCell();
      td.textContent = text ?? "";
      if (className) td.className = className;
      if (title) td.title = title;
    }
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// -- the chart: candles + volume + SMA/EMA in pane 0, RSI in pane 1, MACD in pane 2 -------------------

const chart = createChart($("chart"), {
  autoSize: true,
  layout: { background: { color: "#ffffff" }, textColor: "#374151", panes: { separatorColor: "#d1d5db" } },
  grid: { vertLines: { color: "#f3f4f6" }, horzLines: { color: "#f3f4f6" } },
  crosshair: { mode: CrosshairMode.Normal },
  timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#d1d5db" },
  rightPriceScale: { borderColor: "#d1d5db" },
});
const line = { lineWidth: 1, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false };
const candleSeries = chart.addSeries(CandlestickSeries, {
  upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false,
});
candleSeries.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });
const volumeSeries = chart.addSeries(HistogramSeries, {
  priceFormat: { type: "volume" }, priceScaleId: "volume", priceLineVisible: false, lastValueVisible: false,
});
chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
const overlaySeries = OVERLAYS.map(([key, title, color]) => [key, chart.addSeries(LineSeries, { ...line, color, title })]);
const rsiSeries = chart.addSeries(LineSeries, { ...line, color: "#7c3aed", title: "RSI 14", lastValueVisible: true,
  autoscaleInfoProvider: () => ({ priceRange: { minValue: 0, maxValue: 100 } }) }, 1);
for (const price of [70, 30]) {
  rsiSeries.createPriceLine({ price, color: "#9ca3af", lineWidth: 1, lineStyle: 2, axisLabelVisible: true, title: "" });
}
const macdHistogram = chart.addSeries(HistogramSeries, { priceLineVisible: false, lastValueVisible: false }, 2);
const macdLine = chart.addSeries(LineSeries, { ...line, color: "#2563eb", title: "MACD" }, 2);
const macdSignal = chart.addSeries(LineSeries, { ...line, color: "#f97316", title: "signal" }, 2);
const [mainPane, rsiPane, macdPane] = chart.panes();
mainPane.setStretchFactor(3);
rsiPane.setStretchFactor(1);
macdPane.setStretchFactor(1);

$("legend").replaceChildren(
  ...[...OVERLAYS.map(([, title, color]) => [title, color]), ["RSI 14 (pane 2)", "#7c3aed"],
    ["MACD / signal / histogram (pane 3)", "#2563eb"], ["incomplete candle", INCOMPLETE]].map(([title, color]) => {
    const span = document.createElement("span");
    span.style.setProperty("--c", color);
    span.textContent = title;
    return span;
  }),
);

function draw(candles, indicators) {
  const precision = decimals(candles.slice(-200).map((c) => c.close));
  candleSeries.applyOptions({ priceFormat: { type: "price", precision, minMove: 10 ** -precision } });
  candleSeries.setData(candles.map((c) => {
    const bar = { time: seconds(c.open_time), open: Number(c.open), high: Number(c.high), low: Number(c.low),
      close: Number(c.close) };
    // A roll-up missing some of its 1m candles is drawn grey (is_complete false).
    return c.is_complete === false ? { ...bar, color: INCOMPLETE, wickColor: INCOMPLETE } : bar;
  }));
  volumeSeries.setData(candles.map((c) => ({
    time: seconds(c.open_time), value: Number(c.volume),
    color: Number(c.close) >= Number(c.open) ? "rgba(22,163,74,0.35)" : "rgba(220,38,38,0.35)",
  })));
  const points = (key) => indicators.filter((r) => r[key] !== null).map((r) => ({ time: seconds(r.open_time),
    value: Number(r[key]) }));
  for (const [key, series] of overlaySeries) series.setData(points(key));
  rsiSeries.setData(points("rsi_14"));
  macdLine.setData(points("macd_line"));
  macdSignal.setData(points("macd_signal"));
  macdHistogram.setData(points("macd_histogram").map((p) => ({ ...p, color: p.value >= 0 ? "#86efac" : "#fca5a5" })));
  chart.timeScale().fitContent();
}

// -- pickers ---------------------------------------------------------------------------------------

let markets = [];

function selected() {
  const end = new Date(`${$("end").value}:00Z`);
  const start = new Date(end.getTime() - Number($("range").value) * 1000);
  return { exchange: $("exchange").value, symbol: $("symbol").value, timeframe: $("timeframe").value,
    start: start.toISOString().replace(".000Z", "Z"), end: end.toISOString().replace(".000Z", "Z") };
}

function market() {
  return markets.find((m) => m.exchange === $("exchange").value && m.symbol === $("symbol").value);
}

// The range ends after the market's last candle (the bundled data are history, not live).
function endAtLatest() {
  const last = market()?.last_candle_at;
  const end = last ? new Date(Math.floor(Date.parse(last) / 60000) * 60000 + MINUTE * 1000) : new Date();
  $("end").value = end.toISOString().slice(0, 16);
}

function fillSymbols() {
  const symbols = markets.filter((m) => m.exchange === $("exchange").value).map((m) => m.symbol);
  $("symbol").replaceChildren(...symbols.map((s) => new Option(s, s)));
}

// -- loading ---------------------------------------------------------------------------------------

let sequence = 0;

async function load() {
  const mine = ++sequence;
  const query = selected();
  if (Number.isNaN(Date.parse(query.end))) {
    setStatus("Pick an end time.", true);
    return;
  }
  setStatus(`Loading ${query.exchange} ${query.symbol} ${query.timeframe} …`);
  const started = performance.now();
  try {
    const [candles, indicators] = await Promise.all([
      getAll("ohlcv", query, "candles"), getAll("indicators", query, "indicators")]);
    if (mine !== sequence) return;
    const fetched = performance.now();
    draw(candles, indicators);
    await nextFrame(); // painted, not only handed over
    const ms = performance.now() - started;
    const fetchMs = fetched - started;
    state.candles = candles;
    state.drawn = candleSeries.data();
    state.render = { ...query, candles: candles.length, ms, fetchMs, drawMs: ms - fetchMs };
    state.renders.push(state.render);
    state.error = null;
    $("chart-title").textContent = `${query.exchange} ${query.symbol} · ${query.timeframe} · ${utcText(query.start)} – `
      + `${utcText(query.end)} UTC`;
    setStatus(candles.length ? `${candles.length} candles, fetched and drawn in ${ms.toFixed(0)} ms.`
      : "No candles in this range: pick another range or press Latest.");
  } catch (error) {
    if (mine !== sequence) return;
    fail(error);
    return;
  } finally {
    if (mine === sequence) state.loads += 1;
  }
  loadPanels(query, mine);
}

function fail(error) {
  state.error = { status: error.status ?? null, message: String(error.message) };
  setStatus(error.status === 401 ? `Not logged in: ${error.message}` : `Error: ${error.message}`, true);
}

async function loadPanels(query, mine) {
  const end = new Date(query.end);
  const heatStart = new Date(Math.max(Date.parse(query.start), end.getTime() - HEATMAP_MAX_DAYS * 86400e3));
  heatStart.setUTCMinutes(0, 0, 0);
  try {
    const [prices, quality, gaps, rateLimit, errors, runs] = await Promise.all([
      get("latest"),
      get("quality/summary", { exchange: query.exchange, symbol: query.symbol, grain: "hour",
        start: heatStart.toISOString(), end: query.end }),
      get("quality/gaps", { exchange: query.exchange, symbol: query.symbol, limit: 50 }),
      get("ops/rate-limit", { minutes: 60 }),
      get("ops/errors", { hours: 24, limit: 20 }),
      get("ops/runs", { limit: 15 }),
    ]);
    if (mine !== sequence) return;
    showLatest(prices.prices);
    showHeatmap(quality.periods, heatStart, end);
    $("quality-range").textContent = `(${query.exchange} ${query.symbol}, hourly score 0–100, ${utcText(heatStart.toISOString())} – ${utcText(query.end)} UTC)`;
    fillTable("gaps", gaps.gaps, (g) => [[utcText(g.gap_start)], [utcText(g.gap_end)], [g.missing_candles, "num"],
      [g.gap_kind], [g.status], [g.task_status ?? "not scheduled"], [g.attempts ?? "", "num"],
      [g.last_error ?? "", "wrap"]], "No open gaps for this market.");
    showRateLimit(rateLimit.minutes);
    fillTable("errors", errors.by_class, (e) => [[e.exchange], [e.error_class], [e.errors, "num"],
      [utcText(e.last_at)]], "No exchange API errors in the last 24 h.");
    fillTable("runs", runs.runs, (r) => [[r.dag_id], [r.run_id, null, r.run_id], [utcText(r.finished_at)],
      [r.markets, "num"], [r.succeeded, "num"], [r.failed, "num"], [r.suspended, "num"], [r.candles ?? "", "num"],
      [r.failed_markets ?? "", "wrap"]], "No runs recorded yet.");
    state.panels += 1;
  } catch (error) {
    if (mine === sequence) fail(error);
  }
}

function showLatest(prices) {
  const now = Date.now() / 1000;
  fillTable("latest", prices, (p) => {
    // staleness_seconds is as of the mart's query; count on from as_of for a page left open.
    const age = p.as_of ? now - seconds(p.as_of) : Number(p.staleness_seconds);
    return [[p.exchange], [p.symbol], [p.price, "num"], [p.price_source], [utcText(p.as_of)],
      [humanSeconds(age), age > STALE_AFTER_S ? "stale" : "fresh", `${Math.round(age)} s since the last price`]];
  }, "No prices yet.");
}

function showHeatmap(periods, start, end) {
  const score = new Map(periods.map((p) => [seconds(p.period_start), p]));
  const cells = [document.createElement("span")];
  for (let h = 0; h < 24; h += 1) {
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = h % 3 === 0 ? String(h).padStart(2, "0") : "";
    cells.push(label);
  }
  const firstDay = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate()) / 1000;
  for (let day = firstDay; day < end.getTime() / 1000; day += 86400) {
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = new Date(day * 1000).toISOString().slice(0, 10);
    cells.push(label);
    for (let h = 0; h < 24; h += 1) {
      const t = day + h * 3600;
      const cell = document.createElement("span");
      cell.className = "cell";
      const p = score.get(t);
      if (p && p.quality_score !== null) {
        const value = Number(p.quality_score);
        // 100 green, 95 amber, 90 and below red
        cell.style.background = `hsl(${Math.max(0, Math.min(120, (value - 90) * 12))}, 70%, 45%)`;
        cell.dataset.score = p.quality_score;
        cell.title = `${utcText(p.period_start)} UTC: score ${p.quality_score}, ${p.present}/${p.expected} candles, `
          + `${p.missing} missing, ${p.duplicates} duplicates, ${p.price_spikes} spikes`;
      } else {
        cell.classList.add("none");
        cell.title = `${new Date(t * 1000).toISOString().slice(0, 13)}:00 UTC: no quality row`;
      }
      cells.push(cell);
    }
  }
  $("heatmap").replaceChildren(...cells);
}

function showRateLimit(minutes) {
  const byExchange = new Map();
  for (const m of minutes) {
    if (!byExchange.has(m.exchange)) byExchange.set(m.exchange, []);
    byExchange.get(m.exchange).push(m);
  }
  const rows = [];
  const nowMinute = Math.floor(Date.now() / 60000) * 60;
  for (const [exchange, list] of byExchange) {
    const at = new Map(list.map((m) => [seconds(m.minute), m]));
    const budget = Number(list.at(-1).budget_per_minute) || Math.max(...list.map((m) => Number(m.tokens_used)));
    const bars = document.createElement("div");
    bars.className = "bars";
    bars.title = `dashed line: budget ${list.at(-1).budget_per_minute ?? "unknown"} tokens/min`;
    for (let t = nowMinute - 59 * 60; t <= nowMinute; t += 60) {
      const m = at.get(t);
      const bar = document.createElement("div");
      const used = m ? Number(m.tokens_used) : 0;
      bar.style.height = `${Math.min(100, (100 * used) / budget)}%`;
      if (m && (used > budget || m.denied > 0 || m.http_429 > 0 || m.http_418 > 0)) bar.className = "over";
      bar.title = m ? `${utcText(m.minute)} UTC: ${m.tokens_used} of ${m.budget_per_minute ?? "?"} tokens `
        + `(${m.budget_used_pct ?? "?"} %), ${m.acquisitions} acquisitions, ${m.denied} denied, `
        + `${m.wait_seconds} s waited, 429: ${m.http_429}, 418: ${m.http_418}` : `${new Date(t * 1000).toISOString().slice(11, 16)}: idle`;
      bars.append(bar);
    }
    const last = list.at(-1);
    const peak = Math.max(...list.map((m) => Number(m.budget_used_pct ?? 0)));
    const sum = (key) => list.reduce((total, m) => total + Number(m[key] ?? 0), 0);
    const name = document.createElement("strong");
    name.textContent = exchange;
    const text = document.createElement("span");
    text.textContent = `last ${last.tokens_used}/${last.budget_per_minute ?? "?"} (${last.budget_used_pct ?? "?"} %), `
      + `peak ${peak} %, denied ${sum("denied")}, 429: ${sum("http_429")}, 418: ${sum("http_418")}`;
    const row = document.createElement("div");
    row.className = "rl-row";
    row.dataset.exchange = exchange;
    row.append(name, bars, text);
    rows.push(row);
  }
  if (!rows.length) {
    const none = document.createElement("p");
    none.className = "empty";
    none.textContent = "No rate-limit use in the last 60 minutes.";
    rows.push(none);
  }
  $("rate-limit").replaceChildren(...rows);
}

// -- start -----------------------------------------------------------------------------------------

async function start() {
  try {
    markets = (await get("markets")).markets;
  } catch (error) {
    fail(error);
    state.loads += 1;
    return;
  }
  const exchanges = [...new Set(markets.map((m) => m.exchange))];
  $("exchange").replaceChildren(...exchanges.map((e) => new Option(e, e)));
  fillSymbols();
  endAtLatest();
  $("exchange").addEventListener("change", () => { fillSymbols(); endAtLatest(); load(); });
  $("symbol").addEventListener("change", () => { endAtLatest(); load(); });
  for (const id of ["timeframe", "range", "end"]) $(id).addEventListener("change", load);
  $("to-latest").addEventListener("click", () => { endAtLatest(); load(); });
  if (!markets.length) {
    setStatus("No markets in the marts yet: run the pipeline (make demo) first.", true);
    return;
  }
  await load();
}

start();
