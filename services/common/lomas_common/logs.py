"""Logs: one line per event, as JSON (LOMAS_LOG_FORMAT=json) or as text for a terminal.

A JSON line holds `time` (UTC, ISO 8601), `level`, `service`, `logger` and `message`, plus
`trace_id` and `span_id` when the event happens inside a span, so a log line leads to its trace.
An exception adds `error` (the exception classes, outermost first) and `stack` (file, line and
function of each frame), never the exceptions' messages: after data access a library's message
may quote a data value, and logs leave the platform.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from types import TracebackType

from opentelemetry import trace

LOG_FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            event["trace_id"] = trace.format_trace_id(span.trace_id)
            event["span_id"] = trace.format_span_id(span.span_id)
        if record.exc_info and record.exc_info[1] is not None:
            event |= _exception_fields(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def _exception_fields(exc_info: ExcInfo | tuple[None, None, None]) -> dict[str, str]:
    error = exc_info[1]
    if error is None:
        return {}
    names: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(names) < 10:
        names.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    frames = traceback.extract_tb(error.__traceback__)
    stack = " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))
    return {"error": " <- ".join(names), "stack": stack}


def configure_logs(service: str, level: str, log_format: str) -> None:
    """Send this process's logs to stderr, one line per event, at `level` and above."""
    if log_format not in LOG_FORMATS:
        raise SystemExit("LOMAS_LOG_FORMAT must be json or text")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(service) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
