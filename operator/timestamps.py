"""Times as the status holds them (RFC 3339, whole seconds, UTC), and as the API server writes them."""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """A time the operator wrote, or the API server (``metadata.creationTimestamp``); ValueError when not one."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def whole_seconds(moment: datetime) -> datetime:
    """``moment`` as the status will hold it, so that a state read back decides as the one written did."""
    return moment.astimezone(UTC).replace(microsecond=0)
