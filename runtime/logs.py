"""Structured logs: one JSON object per line on stderr, one line per event.

Call sites log a short message and an ``event`` name with the facts as extra fields, e.g.
``log.info("model loaded", extra={"event": "model_loaded", "seconds": 0.4})``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# What every LogRecord carries (python-json-logger's list; taskName is new in Python 3.12).
_RECORD_ATTRS = frozenset(RESERVED_ATTRS) | {"taskName"}
# kopf's object loggers attach these to each record: the operator's whole settings (which cannot be serialized),
# an internal flag, and the object's reference, of which only the namespace and name are logged.
_KOPF_ATTRS = frozenset({"settings", "k8s_skip", "k8s_ref"})
_OBJECT_FIELDS = ("namespace", "name")


class EventFormatter(JsonFormatter):
    """python-json-logger's formatter, writing only the fields we choose.

    - ``time``, ``level``, ``logger``, ``message`` (and ``exc_info`` with a traceback);
    - ``namespace`` and ``name`` of the Kubernetes object a kopf object logger speaks of;
    - the facts of our own events: the extra fields of a record that names an ``event``.

    Other extras are left out: libraries attach whatever they like (kopf its settings object), and one
    field that cannot be serialized would cost the whole line.
    """

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        ours = "event" in record.__dict__
        chosen = {
            key: value
            for key, value in record.__dict__.items()
            if key in _RECORD_ATTRS or (ours and key not in _KOPF_ATTRS)
        }
        super().add_fields(log_data, logging.makeLogRecord(chosen), message_dict)
        ref = record.__dict__.get("k8s_ref")
        if isinstance(ref, Mapping):
            log_data.update({field: ref[field] for field in _OBJECT_FIELDS if ref.get(field)})


def json_handler(fields: Mapping[str, Any] | None = None) -> logging.Handler:
    """A handler writing one JSON object per line to stderr; ``fields`` go on every line (a worker's index)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        EventFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            static_fields=dict(fields or {}),
        )
    )
    return handler


def configure_logging(level: str, fields: Mapping[str, Any] | None = None) -> None:
    handler = json_handler(fields)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python's warnings too become log lines, not free text
    # One line per request at INFO (event "request"); opt-in (access_log), so whatever the level, keep them.
    logging.getLogger("kubeserve.access").setLevel(logging.INFO)
