"""What the query families built on typed keyword arguments (`diffprivlib_client`,
`smartnoise_synth_client`) share: what they need of the client (`QueryRunner`), how their keywords
are checked when a call runs, and which of them go on to `Client.submit`. As `src/query-family.ts`
in the TypeScript client."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, Unpack

from lomas.client.options import RunOptions, SubmitOptions

if TYPE_CHECKING:  # only for annotations: the client imports the families before it is defined
    import pandas as pd

    from lomas.client.jobs import QueryJob
    from lomas.common.v1 import query_pb2


class QueryRunner(Protocol):
    """What a query family (`DiffPrivLibClient`, `SmartnoiseSynthClient`) needs of
    `lomas.client.Client`, which builds it: price, run and submit the queries it builds."""

    def _estimate(self, query: query_pb2.Query) -> dict[str, Decimal]: ...

    def _execute(self, query: query_pb2.Query, run: RunOptions) -> pd.DataFrame: ...

    def submit(self, query: query_pb2.Query, **options: Unpack[SubmitOptions]) -> QueryJob: ...


def refuse_unknown(options: Mapping[str, object], accepted: frozenset[str]) -> None:
    """Refuse keyword arguments that `accepted` does not name, as Python refuses unknown named
    parameters: a TypedDict's keywords are only checked by type checkers, not when the call runs."""
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(unknown)}")


def submit_options(options: SubmitOptions) -> SubmitOptions:
    """The submit's own keywords out of a method's wider set (`Client.submit` takes only these)."""
    submit: SubmitOptions = {}
    if "request_id" in options:
        submit["request_id"] = options["request_id"]
    if "fresh" in options:
        submit["fresh"] = options["fresh"]
    return submit
