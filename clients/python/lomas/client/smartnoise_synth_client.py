"""DP synthetic data with SmartNoise-Synth: `client.smartnoise_synth.cost/query/submit`, with Lomas's
parameter names.

samples = client.smartnoise_synth.query(
    "mst", epsilon=1.0, select_cols=["species", "island"], nb_samples=100
)  # a pandas DataFrame with exactly those columns and 100 rows

Synthesizers: "mwem", "aim" and "mst" everywhere; "patectgan" and "pategan" where the platform runs
its heavy pool (otherwise PoolUnavailable: FAILED_PRECONDITION, HEAVY_POOL_UNAVAILABLE, before any
charge); "dpctgan" and "dpgan" are refused (their accountant, Opacus 0.14, warns that its budget is
incorrect). `return_model=True` is refused (no model of private data leaves the platform). The cost is
the epsilon you ask for, and the delta for the synthesizers that spend one (aim and mst take 1e-9
when you give none).

`synth_params` is a dict of the synthesizer's own parameters (JSON values only). `constraints` is a
dict of SmartNoise-Synth transformers per column, as in Lomas (sent in the JSON form of
smartnoise-synth-logger; only binning and scaling of numeric columns between given bounds can be
changed), or that JSON already as a dict or text.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, Unpack

import pandas as pd

from lomas.client.jobs import QueryJob
from lomas.client.options import RunOptions, SubmitOptions, decimal_text
from lomas.common.v1 import query_pb2

# Lomas's default number of samples.
DEFAULT_SAMPLES = 200
_TYPE_PREFIX = "_ssynth_type:"


class QueryRunner(Protocol):
    """What this namespace needs of `lomas.client.Client`."""

    def _estimate(self, query: query_pb2.Query) -> dict[str, Decimal]: ...

    def _execute(self, query: query_pb2.Query, run: RunOptions) -> pd.DataFrame: ...

    def submit(self, query: query_pb2.Query, **options: Unpack[SubmitOptions]) -> QueryJob: ...


def constraints_json(constraints: Mapping[str, Any] | str | None) -> str:
    """The JSON text of `constraints`: transformer objects are written the way
    smartnoise-synth-logger writes them (class name and constructor parameters); dicts and text go
    as they are."""
    if not constraints:
        return ""
    if isinstance(constraints, str):
        return constraints
    return json.dumps(
        {
            "module": "smartnoise-synth",
            "constraints": {str(k): _transformer(v) for k, v in constraints.items()},
        }
    )


def _transformer(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | Mapping | list):
        return value
    name = type(value).__name__
    if name == "ChainTransformer":
        params: Any = [_transformer(t) for t in getattr(value, "transformers", [])]
    else:
        accepted = inspect.signature(type(value)).parameters
        params = {
            key: item
            for key, item in vars(value).items()
            if key in accepted and key != "odometer" and _plain(item)
        }
    return {"type": _TYPE_PREFIX + name, "name": name, "params": params}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class SmartnoiseSynthClient:
    """DP synthetic data: the release is a DataFrame of samples (never a model)."""

    def __init__(self, client: QueryRunner) -> None:
        self._client = client

    @staticmethod
    def _query(
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None,
        select_cols: Sequence[str] | None,
        synth_params: Mapping[str, Any] | None,
        nullable: bool,
        constraints: Mapping[str, Any] | str | None,
        return_model: bool = False,
        condition: str = "",
        nb_samples: int = DEFAULT_SAMPLES,
    ) -> query_pb2.Query:
        if isinstance(nb_samples, bool) or not isinstance(nb_samples, int) or nb_samples < 0:
            raise TypeError("nb_samples must be a non-negative integer")
        return query_pb2.Query(
            smartnoise_synth=query_pb2.SmartnoiseSynthQuery(
                synth_name=synth_name,
                epsilon=decimal_text(epsilon, "epsilon"),
                delta="" if delta is None else decimal_text(delta, "delta"),
                select_cols=list(select_cols or []),
                synth_params_json=json.dumps(dict(synth_params)) if synth_params else "",
                nullable=nullable,
                constraints_json=constraints_json(constraints),
                return_model=return_model,
                condition=condition,
                nb_samples=nb_samples,
            )
        )

    def cost(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        synth_params: Mapping[str, Any] | None = None,
        nullable: bool = True,
        constraints: Mapping[str, Any] | str | None = None,
    ) -> dict[str, Decimal]:
        """The exact cost the synthesis would be charged (free; the data is never read)."""
        return self._client._estimate(
            self._query(
                synth_name, epsilon, delta, select_cols, synth_params, nullable, constraints
            )
        )

    def query(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        synth_params: Mapping[str, Any] | None = None,
        nullable: bool = True,
        constraints: Mapping[str, Any] | str | None = None,
        return_model: bool = False,
        condition: str = "",
        nb_samples: int = DEFAULT_SAMPLES,
        **run: Unpack[RunOptions],
    ) -> pd.DataFrame:
        """Fit the synthesizer on the dataset and return `nb_samples` samples of `select_cols`
        (every column when empty; `condition`, a SQL WHERE clause, filters them). `dummy=True`
        fits on seeded dummy data instead, free (`nb_rows`, `seed`). `frame.attrs` holds
        query_id, cost and replay, as for the other query kinds."""
        return self._client._execute(
            self._query(
                synth_name,
                epsilon,
                delta,
                select_cols,
                synth_params,
                nullable,
                constraints,
                return_model,
                condition,
                nb_samples,
            ),
            run,
        )

    def submit(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        synth_params: Mapping[str, Any] | None = None,
        nullable: bool = True,
        constraints: Mapping[str, Any] | str | None = None,
        condition: str = "",
        nb_samples: int = DEFAULT_SAMPLES,
        **options: Unpack[SubmitOptions],
    ) -> QueryJob:
        """Start the synthesis and return its job at once (`job.result()` waits for the samples)."""
        return self._client.submit(
            self._query(
                synth_name,
                epsilon,
                delta,
                select_cols,
                synth_params,
                nullable,
                constraints,
                False,
                condition,
                nb_samples,
            ),
            **options,
        )
