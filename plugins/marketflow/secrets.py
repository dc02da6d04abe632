"""Exchange API credentials: where they come from, and keeping them out of everything we store or log.

Credentials are optional (market data is public). They come from the Airflow connection named in
the markets file (`credentials_conn_id`: login = API key, password = secret, extra
`{"password": "<passphrase>"}` for OKX) or from MARKETFLOW_<EXCHANGE>_API_KEY / _SECRET /
_PASSWORD. Never from the markets file itself.

Everything that leaves a ccxt call (recorded URL and body, error messages) goes through
``redact``: the credential values and signature-like query parameters become ``***``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

MASK = "***"
_SENSITIVE_PARAMS = re.compile(
    r"(?i)([?&](?:signature|sign|apikey|api_key|api-key|secret|passphrase|password|access_key|token)=)[^&#\s]*")


def exchange_credentials(name: str, conn_id: str | None = None) -> dict[str, str]:
    """ccxt credential parameters (apiKey, secret, password) for exchange ``name``; empty when none."""
    creds: dict[str, str] = {}
    if conn_id:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        creds = {"apiKey": conn.login or "", "secret": conn.password or "",
                 "password": (conn.extra_dejson or {}).get("password", "")}
    else:
        prefix = f"MARKETFLOW_{name.upper()}_"
        creds = {"apiKey": os.environ.get(prefix + "API_KEY", ""), "secret": os.environ.get(prefix + "SECRET", ""),
                 "password": os.environ.get(prefix + "PASSWORD", "")}
    creds = {k: v for k, v in creds.items() if v}
    _mask_in_airflow_logs(creds.values())
    _LOG_FILTER.secrets.update(v for v in creds.values() if len(v) >= 4)
    return creds


class _RedactingFilter(logging.Filter):
    """ccxt's debug log prints request headers (Binance's X-MBX-APIKEY) and signed URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets or "signature=" in str(record.msg):
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True


_LOG_FILTER = _RedactingFilter()
for _name in ("ccxt.base.exchange", "ccxt"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)


def _mask_in_airflow_logs(values: Iterable[str]) -> None:
    try:
        # the task's masker, and the supervisor's that writes the task log
        from airflow.sdk.log import mask_secret
    except ImportError:  # outside Airflow: redact() still protects what we store
        return
    for value in values:
        mask_secret(value)


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every credential value and signature-like query parameter replaced by ***."""
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    if "=" not in text:  # a response body seldom has one: skip the (slower) pattern scan
        return text
    return _SENSITIVE_PARAMS.sub(lambda m: m.group(1) + MASK, text)
