"""A span exporter that appends finished spans to a file, one JSON object per line
(LOMAS_TRACE_FILE). It is for tests and local debugging: every process of a local mesh can append
to the same file, and a test reads one trace across all of them without a collector.

Each line is the SDK's JSON form of a span (`ReadableSpan.to_json`): `context.trace_id` and
`context.span_id` as 0x-prefixed hex, `parent_id`, `kind`, `attributes`, and the process's
`resource` (`service.name`). A line is written with one `write` on a file opened for appending,
so lines of concurrent processes do not interleave.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesSpanExporter(SpanExporter):
    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._opened_by = 0  # the process that opened `_fd`

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        try:
            with self._lock:
                if self._fd is None or self._opened_by != os.getpid():
                    # A forked child opens its own descriptor: the parent's may be closed by then.
                    self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    self._opened_by = os.getpid()
                os.write(self._fd, lines.encode())
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
