"""Loaders for recorded candle files and the data directory scan.

Layout: ``DIR/<exchange>/<BASE>-<QUOTE>/<timeframe>/*`` where timeframe is a ccxt name
(1m, 5m, 1h, 1d, ...). Each directory may hold any mix of:

* Binance kline CSV (data.binance.vision dump): 12 columns, optional header; open/close
  times in ms or µs (µs since 2025) - detected by magnitude.
* OKX candlestick CSV with header
  ``instrument_name,open,high,low,close,vol,vol_ccy,vol_quote,open_time,confirm``.
* JSON array of ``[ts_ms, open, high, low, close, volume]`` (numbers or strings).
* ``.zip`` archives containing one or more of the CSV files above.

Numbers are kept as the exact strings of the file. Fields a format lacks are filled as:

=============  ===========================  ==========================  ===========================
field          Binance CSV                  OKX CSV                     JSON
=============  ===========================  ==========================  ===========================
close time     from file (µs -> ms)         open + duration - 1         open + duration - 1
quote volume   from file                    vol_quote (volCcy=vol_ccy)  vol*(o+h+l+c)/4, exact Decimal
trades         from file                    0                           0
taker buy      from file                    "0"                         "0"
confirm        "1"                          from file                   "1"
=============  ===========================  ==========================  ===========================
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from exchange_emulator.candles import Candle, estimated_quote_volume
from exchange_emulator.timeframes import MINUTE, Timeframe, parse_ccxt_timeframe

log = logging.getLogger(__name__)

OKX_HEADER = [
    "instrument_name",
    "open",
    "high",
    "low",
    "close",
    "vol",
    "vol_ccy",
    "vol_quote",
    "open_time",
    "confirm",
]
_MICROS_THRESHOLD = 10**14  # ms timestamps stay below this until the year 5138


class LoaderError(ValueError):
    pass


def to_ms(raw: str | int) -> int:
    value = int(raw)
    return value // 1000 if value >= _MICROS_THRESHOLD else value


def _rows(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]


def parse_binance_csv(text: str, tf_ms: int = MINUTE) -> list[Candle]:
    rows = _rows(text)
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # newer dumps ship a header line
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) < 11:
            raise LoaderError(f"binance kline row {n}: expected 12 columns, got {len(row)}")
        ts = to_ms(row[0])
        out.append(
            Candle(
                ts=ts,
                open=row[1],
                high=row[2],
                low=row[3],
                close=row[4],
                volume=row[5],
                close_ts=to_ms(row[6]),
                quote_volume=row[7],
                quote_volume2=row[7],
                trades=int(row[8]),
                taker_base=row[9],
                taker_quote=row[10],
                confirm="1",
            )
        )
    return out


def parse_okx_csv(text: str, tf_ms: int = MINUTE) -> list[Candle]:
    rows = _rows(text)
    if not rows or [c.strip() for c in rows[0]] != OKX_HEADER:
        raise LoaderError("OKX candlestick CSV must start with header " + ",".join(OKX_HEADER))
    out = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) < 9:
            raise LoaderError(f"OKX candlestick line {n}: expected 10 columns, got {len(row)}")
        rec = dict(zip(OKX_HEADER, row, strict=False))  # confirm may be missing
        ts = to_ms(rec["open_time"])
        out.append(
            Candle(
                ts=ts,
                open=rec["open"],
                high=rec["high"],
                low=rec["low"],
                close=rec["close"],
                volume=rec["vol"],
                close_ts=ts + tf_ms - 1,
                quote_volume=rec["vol_ccy"],
                quote_volume2=rec["vol_quote"],
                trades=0,
                taker_base="0",
                taker_quote="0",
                confirm=rec.get("confirm") or "1",
            )
        )
    return out


def parse_json_candles(text: str, tf_ms: int = MINUTE) -> list[Candle]:
    # parse_float/parse_int=str keep the literal digits of the file, never a float
    data = json.loads(text, parse_float=str, parse_int=str)
    if not isinstance(data, list):
        raise LoaderError("JSON candle file must be an array of [ts, o, h, l, c, v]")
    out = []
    for n, row in enumerate(data, 1):
        if not isinstance(row, list) or len(row) < 6:
            raise LoaderError(f"JSON candle {n}: expected [ts, open, high, low, close, volume]")
        ts = to_ms(row[0])
        o, h, low, c, v = (str(x) for x in row[1:6])
        quote = estimated_quote_volume(o, h, low, c, v)
        out.append(Candle(ts, o, h, low, c, v, ts + tf_ms - 1, quote, quote, 0, "0", "0", "1"))
    return out


def parse_csv_any(text: str, tf_ms: int = MINUTE) -> list[Candle]:
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    if first.startswith("instrument_name"):
        return parse_okx_csv(text.lstrip("\ufeff"), tf_ms)
    return parse_binance_csv(text.lstrip("\ufeff"), tf_ms)


def load_file(path: Path, tf_ms: int = MINUTE) -> list[Candle]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return parse_csv_any(path.read_text(encoding="utf-8"), tf_ms)
    if suffix == ".json":
        return parse_json_candles(path.read_text(encoding="utf-8"), tf_ms)
    if suffix == ".zip":
        out: list[Candle] = []
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                if name.lower().endswith(".csv"):
                    out.extend(parse_csv_any(zf.read(name).decode("utf-8"), tf_ms))
        return out
    raise LoaderError(f"unsupported candle file type: {path.name}")


CANDLE_SUFFIXES = {".csv", ".json", ".zip"}


def merge_sorted(chunks: Iterable[list[Candle]], label: str = "") -> list[Candle]:
    """Ascending, de-duplicated by open time (first file in name order wins)."""
    by_ts: dict[int, Candle] = {}
    dupes = conflicts = 0
    for chunk in chunks:
        for c in chunk:
            prev = by_ts.get(c.ts)
            if prev is None:
                by_ts[c.ts] = c
            else:
                dupes += 1
                conflicts += prev != c
    if dupes:
        log.warning(
            "%s: %d duplicate open times across files (%d conflicting), kept first", label, dupes, conflicts
        )
    return [by_ts[ts] for ts in sorted(by_ts)]


@dataclass
class RecordedSeries:
    """All files of one market/timeframe; loaded on first use."""

    timeframe: Timeframe
    files: list[Path]
    _candles: list[Candle] | None = field(default=None, repr=False)

    def candles(self) -> list[Candle]:
        if self._candles is None:
            chunks = [load_file(p, self.timeframe.ms or MINUTE) for p in self.files]
            self._candles = merge_sorted(chunks, label=str(self.files[0].parent))
        return self._candles


@dataclass
class RecordedMarket:
    exchange: str
    base: str
    quote: str
    series: dict[str, RecordedSeries]  # by ccxt timeframe name

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"


def scan_data_dir(root: Path | None) -> dict[tuple[str, str], RecordedMarket]:
    """Map (exchange, "BASE/QUOTE") -> RecordedMarket from the directory layout (files are not read)."""
    markets: dict[tuple[str, str], RecordedMarket] = {}
    if root is None or not root.is_dir():
        return markets
    for ex_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for mkt_dir in sorted(p for p in ex_dir.iterdir() if p.is_dir()):
            if "-" not in mkt_dir.name:
                log.warning("skipping %s: market directory must be BASE-QUOTE", mkt_dir)
                continue
            base, quote = mkt_dir.name.upper().split("-", 1)
            series: dict[str, RecordedSeries] = {}
            for tf_dir in sorted(p for p in mkt_dir.iterdir() if p.is_dir()):
                tf = parse_ccxt_timeframe(tf_dir.name)
                if tf is None:
                    log.warning("skipping %s: unknown timeframe", tf_dir)
                    continue
                files = sorted(
                    p for p in tf_dir.iterdir() if p.is_file() and p.suffix.lower() in CANDLE_SUFFIXES
                )
                if files:
                    series[tf.name] = RecordedSeries(tf, files)
            if series:
                exchange = ex_dir.name.lower()
                markets[(exchange, f"{base}/{quote}")] = RecordedMarket(exchange, base, quote, series)
    return markets
