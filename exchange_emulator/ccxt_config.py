"""ccxt overrides that point the real ccxt Binance/OKX/Bybit classes at the emulator.

Every API base URL ccxt knows for the exchange is redirected (mirroring the real path
layout), so even an unexpected call hits the emulator (and gets a 404) instead of the
internet. ``test``/``demo`` URL sets are redirected too, so sandbox mode stays offline.
"""

from __future__ import annotations

from typing import Any

# ccxt 4.5.x binance urls['api'] keys -> real path prefix
_BINANCE_API_PATHS = {
    "public": "/api/v3",
    "private": "/api/v3",
    "v1": "/api/v1",
    "sapi": "/sapi/v1",
    "sapiV2": "/sapi/v2",
    "sapiV3": "/sapi/v3",
    "sapiV4": "/sapi/v4",
    "dapiPublic": "/dapi/v1",
    "dapiPrivate": "/dapi/v1",
    "dapiPrivateV2": "/dapi/v2",
    "dapiData": "/futures/data",
    "fapiPublic": "/fapi/v1",
    "fapiPublicV2": "/fapi/v2",
    "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1",
    "fapiPrivateV2": "/fapi/v2",
    "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
    "eapiPublic": "/eapi/v1",
    "eapiPrivate": "/eapi/v1",
    "papi": "/papi/v1",
    "papiV2": "/papi/v2",
}


def ccxt_urls(exchange_id: str, base_url: str) -> dict[str, Any]:
    """The ``urls`` constructor override for ccxt.<exchange_id> talking to the emulator at base_url."""
    base = base_url.rstrip("/")
    if exchange_id == "binance":
        api = {key: base + path for key, path in _BINANCE_API_PATHS.items()}
        return {"api": api, "test": dict(api), "demo": dict(api)}
    if exchange_id == "okx":
        return {"api": {"rest": base}, "test": {"rest": base}}
    if exchange_id == "bybit":
        # ccxt 4.5.x bybit: every api key is https://api.{hostname}, v5 paths below it
        api = {key: base for key in ("spot", "futures", "v2", "public", "private")}
        return {"api": api, "test": dict(api), "demotrading": dict(api)}
    raise ValueError(f"emulator only speaks binance, okx and bybit, not {exchange_id!r}")


def ccxt_options(exchange_id: str) -> dict[str, Any]:
    """``options`` so that load_markets only asks for spot markets (one request)."""
    if exchange_id == "binance":
        # only /api/v3/exchangeInfo; no fapi/dapi exchangeInfo, no margin pair lists
        return {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False, "defaultType": "spot"}
    if exchange_id == "okx":
        # only /api/v5/public/instruments?instType=SPOT
        return {"fetchMarkets": {"types": ["spot"]}, "defaultType": "spot"}
    if exchange_id == "bybit":
        # only /v5/market/instruments-info?category=spot (ccxt's default also loads linear, inverse and
        # options). load_markets' fetch_currencies would ask the private /v5/asset/coin/query-info, but
        # ccxt's bybit returns {} without a request when no API key is set (no option switches it off).
        return {"fetchMarkets": {"types": ["spot"]}, "defaultType": "spot"}
    raise ValueError(f"emulator only speaks binance, okx and bybit, not {exchange_id!r}")


def ccxt_config(exchange_id: str, base_url: str, **extra: Any) -> dict[str, Any]:
    """Full constructor config: ``ccxt.binance(ccxt_config("binance", url))``."""
    config: dict[str, Any] = {
        "urls": ccxt_urls(exchange_id, base_url),
        "options": ccxt_options(exchange_id),
        "enableRateLimit": True,
    }
    config.update(extra)
    return config
