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
from typing import Any, TypedDict, Unpack

import pandas as pd

from lomas.client.family import QueryRunner, refuse_unknown, submit_options
from lomas.client.jobs import QueryJob
from lomas.client.options import RunOptions, SubmitOptions, decimal_text
from lomas.common.v1 import query_pb2

# Lomas's default number of samples.
DEFAULT_SAMPLES = 200
_TYPE_PREFIX = "_ssynth_type:"


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


class SynthesisOptions(TypedDict, total=False):
    """How the synthesizer is fitted (keyword arguments, with Lomas's names):

    - `synth_params` (default none): the synthesizer's own parameters (JSON values only);
    - `nullable` (default True): whether the selected columns may hold missing values;
    - `constraints` (default none): SmartNoise-Synth transformers per column (see this module).
    """

    synth_params: Mapping[str, Any] | None
    nullable: bool
    constraints: Mapping[str, Any] | str | None


class SamplingOptions(TypedDict, total=False):
    """What a synthesis that runs adds to `SynthesisOptions`: `nb_samples` (default 200) samples,
    filtered by `condition` (a SQL WHERE clause; default none)."""

    condition: str
    nb_samples: int


class SynthesisQueryOptions(SynthesisOptions, SamplingOptions, RunOptions, total=False):
    """The keyword arguments of `SmartnoiseSynthClient.query`: the synthesis's, `return_model` (as
    in Lomas, and refused: no model of private data leaves the platform), then the run's."""

    return_model: bool


class SynthesisSubmitOptions(SynthesisOptions, SamplingOptions, SubmitOptions, total=False):
    """The keyword arguments of `SmartnoiseSynthClient.submit`: the synthesis's, then the submit's."""


class SmartnoiseSynthClient:
    """DP synthetic data: the release is a DataFrame of samples (never a model). The synthesizer,
    its budget (epsilon, delta) and the columns may be given by position; the rest are keywords:
    `SynthesisOptions`, and what `query` and `submit` add to them."""

    def __init__(self, client: QueryRunner) -> None:
        self._client = client

    @staticmethod
    def _query(
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None,
        select_cols: Sequence[str] | None,
        options: SynthesisOptions,
        accepted: frozenset[str],
        *,
        sampling: SamplingOptions | None = None,
        return_model: bool = False,
    ) -> query_pb2.Query:
        """The query; `sampling` and `return_model` are what a run adds (a cost needs neither)."""
        refuse_unknown(options, accepted)
        sampling = sampling or {}
        nb_samples = sampling.get("nb_samples", DEFAULT_SAMPLES)
        if isinstance(nb_samples, bool) or not isinstance(nb_samples, int) or nb_samples < 0:
            raise TypeError("nb_samples must be a non-negative integer")
        synth_params = options.get("synth_params")
        return query_pb2.Query(
            smartnoise_synth=query_pb2.SmartnoiseSynthQuery(
                synth_name=synth_name,
                epsilon=decimal_text(epsilon, "epsilon"),
                delta="" if delta is None else decimal_text(delta, "delta"),
                select_cols=list(select_cols or []),
                synth_params_json=json.dumps(dict(synth_params)) if synth_params else "",
                nullable=options.get("nullable", True),
                constraints_json=constraints_json(options.get("constraints")),
                return_model=return_model,
                condition=sampling.get("condition", ""),
                nb_samples=nb_samples,
            )
        )

    def cost(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        **options: Unpack[SynthesisOptions],
    ) -> dict[str, Decimal]:
        """The exact cost the synthesis would be charged (free; the data is never read)."""
        accepted = SynthesisOptions.__optional_keys__
        query = self._query(synth_name, epsilon, delta, select_cols, options, accepted)
        return self._client._estimate(query)

    def query(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        **options: Unpack[SynthesisQueryOptions],
    ) -> pd.DataFrame:
        """Fit the synthesizer on the dataset and return `nb_samples` samples of `select_cols`
        (every column when empty; `condition`, a SQL WHERE clause, filters them). `dummy=True`
        fits on seeded dummy data instead, free (`nb_rows`, `seed`). `frame.attrs` holds
        query_id, cost and replay, as for the other query kinds."""
        accepted = SynthesisQueryOptions.__optional_keys__
        return_model = options.get("return_model", False)
        query = self._query(
            synth_name,
            epsilon,
            delta,
            select_cols,
            options,
            accepted,
            sampling=options,
            return_model=return_model,
        )
        return self._client._execute(query, options)

    def submit(
        self,
        synth_name: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal | None = None,
        select_cols: Sequence[str] | None = None,
        **options: Unpack[SynthesisSubmitOptions],
    ) -> QueryJob:
        """Start the synthesis and return its job at once (`job.result()` waits for the samples)."""
        accepted = SynthesisSubmitOptions.__optional_keys__
        query = self._query(
            synth_name, epsilon, delta, select_cols, options, accepted, sampling=options
        )
        return self._client.submit(query, **submit_options(options))
