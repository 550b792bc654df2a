"""What every query method shares: how a query runs (`RunOptions`), how it is submitted
(`SubmitOptions`), and how parameters travel (exact decimal text). Imported by the client and by each
query family's own module (`diffprivlib_client`), which the client imports in turn."""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict


def decimal_text(value: float | int | str | Decimal, name: str) -> str:
    """Parameters travel as exact decimal strings; floats go through their shortest repr."""
    if isinstance(value, bool) or not isinstance(value, float | int | str | Decimal):
        raise TypeError(f"{name} must be a number")
    return repr(value) if isinstance(value, float) else str(value)


class RunOptions(TypedDict, total=False):
    """How a query runs: the keyword arguments every `query` method takes after its own.

    - `dummy` (default False): run on seeded dummy data instead, free;
    - `nb_rows` (default 100, at least 1) and `seed` (default 42): the dummy data;
    - `request_id`: names this query, so a retry with it returns the first answer and is never
      charged twice (a new one is made when none is given);
    - `fresh` (default False): pay for a new draw of noise instead of a free replay of your earlier
      release of the same query;
    - `progress` (default: only when standard error is a terminal): show a progress bar (queued,
      with the place in the queue, then running) when the query takes more than about a second.
    """

    dummy: bool
    nb_rows: int
    seed: int
    request_id: str | None
    fresh: bool
    progress: bool | None


class SubmitOptions(TypedDict, total=False):
    """How a query is submitted: `request_id` and `fresh`, as for `query` (see RunOptions)."""

    request_id: str | None
    fresh: bool
