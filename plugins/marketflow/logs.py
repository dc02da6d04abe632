"""Structured logs: every marketflow log event is a structlog event, a sentence in words plus fields.

    log = get_logger(__name__)
    log.info("%s %s: %d candles loaded", ex, sym, n, exchange=ex, symbol=sym, candles=n)

Where the lines go depends on who configured structlog, not on this module:

* **Airflow task** (the task SDK configures structlog before it imports the DAG): the event, its
  fields and the run's ``dag_id``/``run_id``/``task_id``/``try_number``/``map_index`` are one JSON line of
  the task log (what the UI shows, and what a log shipper reads). A stdlib ``logging`` call's ``extra=``
  would be dropped there, which is why the project logs through structlog.
* **Standalone API** (:func:`configure_json`): JSON lines on stdout, uvicorn's own and one access event
  per request.
* **Anything else** (the CLI, scripts, tests; structlog not configured yet): the events go on to the
  stdlib logger of the same name with the fields as record attributes, so ``logging.basicConfig`` and
  pytest's ``caplog`` see them as before.

Field names used across the project: ``exchange``, ``symbol``, ``timeframe``, ``window`` (``start/end``
ISO 8601), ``candles``, ``inserted``, ``failed``, ``error_class``, ``error``, ``attempt``, ``table``, ``rows``,
``seconds``. They must not be the name of a ``logging.LogRecord`` attribute (``name``, ``module``,
``filename``, ``process``, ``message``...): stdlib refuses those as extras.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog


def get_logger(name: str) -> Any:
    """The logger of module ``name`` (a structlog logger bound lazily to the current configuration)."""
    return structlog.get_logger(name)


def route_to_stdlib(force: bool = False) -> None:
    """Hand events to stdlib logging, unless someone (Airflow) configured structlog first and not
    ``force`` (tests: importing Airflow configures structlog, and ``caplog`` reads stdlib)."""
    if structlog.is_configured() and not force:
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.render_to_log_kwargs,  # msg = the words, extra = the fields
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Airflow may configure structlog after this module is imported: don't pin the first config.
        cache_logger_on_first_use=False,
    )


route_to_stdlib()


def window_field(span: Any) -> str:
    """A window of candle open times (anything with ``start_ms``/``end_ms``) as one field: ``start/end``
    in ISO 8601 interval notation, UTC."""
    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    return f"{iso(span.start_ms)}/{iso(span.end_ms)}"


def _drop_color_message(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """uvicorn passes its message again with terminal colour codes as ``extra``: not for a JSON line."""
    event_dict.pop("color_message", None)
    return event_dict


def configure_json(stream: TextIO | None = None, level: str = "INFO") -> None:
    """Every log line of this process as one JSON object (the standalone API): structlog's events and
    every stdlib logger's (uvicorn's, psycopg's) through the same structlog processors."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(default=str),
        ],
        # stdlib records (uvicorn, libraries): their %-args, their extra= fields, then the shared ones
        "foreign_pre_chain": [
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
        ],
    }
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": stream or sys.stdout}},
        "root": {"handlers": ["stdout"], "level": level},
        # uvicorn configured its own text handlers before it imported the app: replace them with ours.
        # Its access line (no duration, no caller) gives way to the app's own (api.app.AccessLog).
        "loggers": {"uvicorn": {"handlers": [], "propagate": True, "level": level},
                    "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
                    "uvicorn.access": {"handlers": [], "propagate": True, "level": "WARNING"}},
    })
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
