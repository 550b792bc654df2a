"""Describing failures without their text: exception messages after data access may quote data.

Libraries put cell values in their messages (a CSV parse error, SQL parameters, a type error), so
code that has touched data logs and reports only the classes of an exception and of its causes.
"""

from __future__ import annotations

from collections.abc import Iterator


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes and contexts, outermost first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def chain_names(exc: BaseException) -> str:
    """The classes of an exception chain, e.g. "StatementError <- SoftTimeLimitExceeded"."""
    return " <- ".join(type(e).__name__ for e in exception_chain(exc))


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the chain (libraries wrap timeouts and memory errors)."""
    return any(isinstance(e, kind) for e in exception_chain(exc))
