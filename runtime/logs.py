"""Structured logs: one JSON object per line on stderr, one line per event.

Call sites log a short message and an ``event`` name with the facts as extra fields, e.g.
``log.info("model loaded", extra={"event": "model_loaded", "seconds": 0.4})``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def json_handler() -> logging.Handler:
    """A handler writing one JSON object per line to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    )
    return handler


def configure_logging(level: str) -> None:
    handler = json_handler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python's warnings too become log lines, not free text
    # aiohttp logs an access line per request at INFO; it is opt-in (access_log), so keep its own logger.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
