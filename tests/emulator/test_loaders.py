"""The three recorded-file formats: exact strings, ms/µs detection, derived fields."""

from __future__ import annotations

import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from exchange_emulator.loaders import (
    LoaderError,
    load_file,
    merge_sorted,
    parse_binance_csv,
    parse_json_candles,
    parse_okx_csv,
    scan_data_dir,
)

from .helpers import BINANCE_DIR, OKX_DIR, SAMPLE_DIR, binance_rows, okx_rows

MS_LINE = (
    "1660435200000,1983.55000000,1983.90000000,1982.14000000,1982.29000000,205.13100000,"
    "1660435259999,406814.92308000,288,105.29930000,208854.93067400,0"
)
US_LINE = (
    "1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.21827000,"
    "1735689659999999,768978.58127210,1564,3.81640000,357101.21306900,0"
)


def test_binance_csv_ms_keeps_exact_strings():
    (c,) = parse_binance_csv(MS_LINE + "\n")
    assert c.ts == 1660435200000 and c.close_ts == 1660435259999
    assert (c.open, c.high, c.low, c.close, c.volume) == (
        "1983.55000000",
        "1983.90000000",
        "1982.14000000",
        "1982.29000000",
        "205.13100000",
    )
    assert (c.quote_volume, c.trades, c.taker_base, c.taker_quote) == (
        "406814.92308000",
        288,
        "105.29930000",
        "208854.93067400",
    )
    assert c.confirm == "1"


def test_binance_csv_microseconds_are_detected():
    (c,) = parse_binance_csv(US_LINE + "\n")
    assert c.ts == 1735689600000
    assert c.close_ts == 1735689659999
    assert c.open == "93576.00000000" and c.quote_volume == "768978.58127210"


def test_binance_csv_with_header_line():
    header = (
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore"
    )
    rows = parse_binance_csv(header + "\n" + MS_LINE + "\n" + US_LINE + "\n")
    assert [r.ts for r in rows] == [1660435200000, 1735689600000]


def test_binance_csv_rejects_short_rows():
    with pytest.raises(LoaderError):
        parse_binance_csv("1660435200000,1,2,3\n")


def test_real_binance_files_round_trip_every_field():
    candles = [c for p in sorted(BINANCE_DIR.glob("*.csv")) for c in load_file(p)]
    raw = binance_rows()
    assert len(candles) == len(raw) == 2880
    for c, r in zip(candles, raw, strict=True):
        assert [
            str(c.ts),
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            str(c.close_ts),
            c.quote_volume,
            str(c.trades),
            c.taker_base,
            c.taker_quote,
        ] == r[:11]


def test_okx_csv_keeps_exact_strings_and_derives_fields():
    text = (
        "instrument_name,open,high,low,close,vol,vol_ccy,vol_quote,open_time,confirm\n"
        "BTC-USDT,87084,87106.1,87076.9,87101.8,4.86906759,424048.925458154,424048.925458154,1763913600000,1\n"
        "BTC-USDT,87101.8,87140.1,87099.1,87125,3.35912882,292631.005231095,292631.005231095,1763913660000,0\n"
    )
    a, b = parse_okx_csv(text)
    assert (a.ts, a.open, a.high, a.low, a.close, a.volume) == (
        1763913600000,
        "87084",
        "87106.1",
        "87076.9",
        "87101.8",
        "4.86906759",
    )
    assert a.quote_volume == a.quote_volume2 == "424048.925458154"
    assert a.close_ts == 1763913659999  # open + 1m - 1
    assert (a.trades, a.taker_base, a.taker_quote) == (0, "0", "0")
    assert (a.confirm, b.confirm) == ("1", "0")
    assert b.close == "87125"


def test_okx_csv_requires_its_header():
    with pytest.raises(LoaderError):
        parse_okx_csv("BTC-USDT,1,2,3,4,5,6,7,1763913600000,1\n")


def test_real_okx_files_round_trip():
    candles = [c for p in sorted(OKX_DIR.glob("*.csv")) for c in load_file(p)]
    raw = okx_rows()
    assert len(candles) == len(raw) == 2880
    for c, r in zip(candles, raw, strict=True):
        assert (
            str(c.ts),
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.quote_volume,
            c.quote_volume2,
            c.confirm,
        ) == (
            r["open_time"],
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["vol"],
            r["vol_ccy"],
            r["vol_quote"],
            r["confirm"],
        )


def test_json_candles_keep_literal_numbers_and_derive_quote_volume_exactly():
    text = (
        '[[1660435200000, 1983.55000000, "1983.90", 1982.1, 1982.29000000, 205.131],'
        " [1660435260000000, 2, 3, 1, 2, 0]]"
    )
    a, b = parse_json_candles(text)
    assert (a.open, a.high, a.low, a.close, a.volume) == (
        "1983.55000000",
        "1983.90",
        "1982.1",
        "1982.29000000",
        "205.131",
    )
    expected = (
        Decimal("205.131")
        * (Decimal("1983.55") + Decimal("1983.90") + Decimal("1982.1") + Decimal("1982.29"))
        / 4
    )
    assert Decimal(a.quote_volume) == expected
    assert a.quote_volume == a.quote_volume2
    assert (a.trades, a.taker_base, a.taker_quote, a.close_ts) == (0, "0", "0", 1660435259999)
    assert b.ts == 1660435260000  # µs in JSON too
    assert b.quote_volume == "0"


def test_json_must_be_an_array_of_rows():
    with pytest.raises(LoaderError):
        parse_json_candles('{"a": 1}')
    with pytest.raises(LoaderError):
        parse_json_candles("[[1, 2, 3]]")


def test_zip_archives_and_duplicates_across_files(tmp_path: Path):
    archive = tmp_path / "ETHUSDT-1m-2022-08-14.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ETHUSDT-1m-2022-08-14.csv", MS_LINE + "\n")
    from_zip = load_file(archive)
    assert from_zip[0].open == "1983.55000000"
    merged = merge_sorted([from_zip, parse_binance_csv(MS_LINE + "\n"), parse_binance_csv(US_LINE + "\n")])
    assert [c.ts for c in merged] == [1660435200000, 1735689600000]


def test_scan_data_dir_layout(tmp_path: Path):
    markets = scan_data_dir(SAMPLE_DIR)
    assert set(markets) == {("binance", "ETH/USDT"), ("okx", "BTC/USDT")}
    assert list(markets[("binance", "ETH/USDT")].series) == ["1m"]
    # mixed formats in one directory + an unknown timeframe directory is skipped
    d = tmp_path / "okx" / "SOL-USDT" / "1h"
    d.mkdir(parents=True)
    (d / "a.json").write_text(json.dumps([[1700000000000, "1", "2", "0.5", "1.5", "10"]]))
    (d / "notes.txt").write_text("ignored")
    (tmp_path / "okx" / "SOL-USDT" / "7x").mkdir()
    found = scan_data_dir(tmp_path)
    assert list(found) == [("okx", "SOL/USDT")]
    assert [p.name for p in found[("okx", "SOL/USDT")].series["1h"].files] == ["a.json"]
    assert found[("okx", "SOL/USDT")].series["1h"].candles()[0].close_ts == 1700000000000 + 3_600_000 - 1
