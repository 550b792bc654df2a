"""Fit a SmartNoise-Synth synthesizer on a validated plan and draw its samples.

Imported only when a synthesis runs (the engine imports it then): SmartNoise-Synth's marginal
synthesizers load JAX (through private-pgm, `mbi`), which neither the pricing path nor the light
workers need. Before JAX starts its threads, glibc is asked for at most `MALLOC_ARENAS` malloc
arenas: each thread would otherwise reserve its own 64 MiB arena, and JAX's ~15 threads alone would
take a gigabyte of address space, beyond the free calls' RLIMIT_AS (a dummy run) and the workers'.

What runs, for a plan from `smartnoise_synth.plan`:
1. every column's transformer is built from the plan (the metadata's categories and bounds) and
   fitted on a small table made from the plan alone (`_domain_frame`), never on the data: no
   category, bound or preprocessor epsilon comes from the data;
2. the private frame keeps the selected columns; a value outside its column's public categories is
   treated as missing, and rows with a missing value are dropped unless the query is `nullable`
   (then the synthesizers model missing values); numbers outside the bounds are clamped;
3. the synthesizer is fitted with the query's epsilon and delta (floats not above the decimals) and
   sampled. mwem runs on the histogram of the public domain (`_MetadataDomainMWEM`): upstream, its
   histogram spans the smallest and largest codes found in the data. SmartNoise-Synth's warnings
   that speak of privacy are errors here;
4. the samples come back with exactly the selected columns, in their order (int columns as ints).

Known limits, upstream: mst and mwem scale their estimates by the data's exact row count (private-pgm's
`known_total`, MWEM's initial histogram), the bounded-DP convention where the row count is public;
the GAN synthesizers' accountants read it too (Opacus' sampling rate, PATE's number of teachers), and
DP-CTGAN checks its budget once per epoch. The noise of these libraries is floating-point (NumPy and
PyTorch), not OpenDP's exact samplers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lomas_executor.smartnoise_synth import SynthColumn, SynthPlan

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def _limit_malloc_arenas() -> None:
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


_limit_malloc_arenas()

# Imported after the arena limit, on purpose (JAX starts threads on first use).
from snsynth import Synthesizer  # noqa: E402
from snsynth.mwem import Histogram, MWEMSynthesizer  # noqa: E402
from snsynth.transform import (  # noqa: E402
    BinTransformer,
    ChainTransformer,
    LabelTransformer,
    MinMaxTransformer,
    OneHotEncoder,
    TableTransformer,
)

# Rejection sampling for `condition`: batches drawn at most (SmartNoise-Synth's `max_tries`).
CONDITION_MAX_TRIES = 20


class _MetadataDomainMWEM(MWEMSynthesizer):
    """MWEM whose histograms span the public domain (the transformer's cardinalities from the
    metadata), not the smallest and largest codes present in the data."""

    def _histogram_from_data_attributes(
        self, data: np.ndarray, splits: list[Any] | None = None
    ) -> list[Any]:
        cardinality = [int(size) for size in self._transformer.cardinality]
        histograms = []
        for split in splits or []:
            indices = [int(index) for index in split]
            dims = [cardinality[index] for index in indices]
            for index in indices:
                self.mins_maxes[str(index)] = (0, cardinality[index] - 1)
                self.scale[str(index)] = 1
            histogram, bins = np.histogramdd(
                data[:, indices], bins=dims, range=[(-0.5, size - 0.5) for size in dims]
            )
            histograms.append(Histogram(histogram, dims, bins, split))
        return histograms


class _VectorTableTransformer(TableTransformer):
    """SmartNoise-Synth's TableTransformer whose `transform` of a DataFrame through label and bin
    transformers (the marginal synthesizers' cube style) is vectorised: the library's transforms
    one value at a time in Python (about a minute per million rows of four columns). The codes are
    the library's own (`tests/test_smartnoise_synth_run.py` compares them); any other input goes
    to the library."""

    def transform(self, data: Any) -> Any:
        kinds = (LabelTransformer, BinTransformer)
        if not isinstance(data, pd.DataFrame) or not all(
            type(t) in kinds for t in self.transformers
        ):
            return super().transform(data)
        if self._columns is not None and list(data.columns) != list(self._columns):
            return super().transform(data)  # the library warns and checks
        outputs: list[np.ndarray] = []
        for name, transformer in zip(data.columns, self.transformers, strict=True):
            outputs.extend(_codes(transformer, data[name]))
        return np.column_stack(outputs) if outputs else np.empty((len(data), 0), dtype=np.int64)


def _codes(transformer: Any, series: pd.Series) -> list[np.ndarray]:
    """One column's codes, as the library's `_transform` gives them (a missing value that the
    transformer cannot take fails as the library's does)."""
    missing = series.isna().to_numpy()
    if isinstance(transformer, LabelTransformer):
        categories = [c for c in transformer.categories if c is not None]
        codes = pd.Categorical(series, categories=categories).codes.astype(np.int64)
        unknown = (codes < 0) & ~missing
        if unknown.any() or (missing.any() and None not in transformer.labels):
            raise KeyError("a value outside the transformer's categories")
        codes[missing] = transformer.labels.get(None, -1)
        return [codes]
    lower, upper, bins = transformer.fit_lower, transformer.fit_upper, transformer.bins
    if missing.any() and not transformer.nullable:
        raise ValueError("Cannot transform None or NaN.  Consider setting nullable=True.")
    values = np.clip(series.to_numpy(dtype=np.float64, na_value=lower), lower, upper)
    binned = np.minimum(bins - 1, np.floor(bins * (values - lower) / (upper - lower)))
    codes = binned.astype(np.int64)
    if not transformer.nullable:
        return [codes]
    codes[missing] = 0
    return [codes, missing.astype(np.int64)]


def execute(plan: SynthPlan, source: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """Fit the plan's synthesizer on `source` (the dataset, or dummy data) and return its samples."""
    frame = private_frame(plan, source)
    transformer = table_transformer(plan)
    synthesizer = _synthesizer(plan)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("error", message=".*privacy")
        warnings.filterwarnings("ignore", message="Pandas dataframe inputs are deprecated")
        synthesizer.fit(frame, transformer=transformer, preprocessor_eps=0.0)
        if transformer.odometer.spent != (0.0, 0.0):  # never: every bound comes from the plan
            raise RuntimeError("the preprocessor spent privacy budget")
        if plan.condition:
            samples = synthesizer.sample_conditional(
                plan.nb_samples, plan.condition, max_tries=CONDITION_MAX_TRIES
            )
        else:
            samples = synthesizer.sample(plan.nb_samples)
    return _output(plan, samples)


def table_transformer(plan: SynthPlan) -> Any:
    """The table transformer of the plan, fitted on the public domain alone."""
    transformers = [_column_transformer(plan, column) for column in plan.columns]
    table = (_VectorTableTransformer if plan.style == "cube" else TableTransformer)(transformers)
    table.fit(_domain_frame(plan))
    if not table.fit_complete or table.needs_epsilon:  # never: every column has its domain
        raise RuntimeError("the transformer would need the data to fit")
    return table


def _column_transformer(plan: SynthPlan, column: SynthColumn) -> Any:
    if column.kind == "categorical":
        label = LabelTransformer(nullable=plan.nullable)
        return label if plan.style == "cube" else ChainTransformer([label, OneHotEncoder()])
    if plan.style == "cube":
        return BinTransformer(
            bins=column.bins, lower=column.lower, upper=column.upper, nullable=plan.nullable
        )
    return MinMaxTransformer(lower=column.lower, upper=column.upper, nullable=plan.nullable)


def _domain_frame(plan: SynthPlan) -> pd.DataFrame:
    """A table of public values only: every category of every categorical column, and the bounds."""
    rows = max([len(c.categories) for c in plan.columns if c.kind == "categorical"] + [2])
    data: dict[str, list[Any]] = {}
    for column in plan.columns:
        if column.kind == "categorical":
            data[column.name] = [column.categories[i % len(column.categories)] for i in range(rows)]
        else:
            data[column.name] = [column.lower if i % 2 else column.upper for i in range(rows)]
    return pd.DataFrame(data, columns=plan.column_names)


def private_frame(plan: SynthPlan, source: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """The selected columns as the transformers take them (see step 2 of the module docstring)."""
    names = plan.column_names
    frame = source.select(names).to_pandas() if isinstance(source, pa.Table) else source[names]
    columns: dict[str, pd.Series] = {}
    for column in plan.columns:
        series = frame[column.name]
        if column.kind == "categorical":
            known = series.isin(list(column.categories)) & series.notna()
            values = series.astype(object).where(known, None)
            if column.categories and isinstance(column.categories[0], bool):
                values = values.map(lambda v: None if v is None else bool(v))
            columns[column.name] = values
        else:
            columns[column.name] = pd.to_numeric(series, errors="coerce").astype("float64")
    result = pd.DataFrame(columns, columns=names)
    if not plan.nullable:
        result = result.dropna(axis=0, how="any")
    return result.reset_index(drop=True)


def _synthesizer(plan: SynthPlan) -> Any:
    kwargs: dict[str, Any] = dict(plan.params)
    if plan.delta is not None:
        kwargs["delta"] = plan.delta
    if plan.synth_name == "mwem":
        return _MetadataDomainMWEM(epsilon=plan.epsilon, **kwargs)
    if plan.synth_name in ("dpctgan", "patectgan"):
        kwargs |= {"verbose": False, "cuda": False}
    if plan.synth_name == "dpctgan":
        kwargs["disabled_dp"] = False
    return Synthesizer.create(plan.synth_name, epsilon=plan.epsilon, **kwargs)


def _output(plan: SynthPlan, samples: Any) -> pd.DataFrame:
    """Exactly the selected columns, in order; continuous int columns rounded back to ints."""
    frame = samples if isinstance(samples, pd.DataFrame) else pd.DataFrame(samples)
    frame = frame.reset_index(drop=True)
    if list(frame.columns) != plan.column_names:
        frame.columns = plan.column_names[: len(frame.columns)]
    out: dict[str, pd.Series] = {}
    for column in plan.columns:
        series = frame[column.name] if column.name in frame else pd.Series([None] * len(frame))
        if column.kind == "continuous":
            numbers = pd.to_numeric(series, errors="coerce")
            if column.integer:
                numbers = numbers.round().astype("Int64")
            out[column.name] = numbers
        elif column.categories and isinstance(column.categories[0], bool):
            out[column.name] = series.astype("boolean")
        elif column.categories and isinstance(column.categories[0], int):
            out[column.name] = pd.to_numeric(series, errors="coerce").astype("Int64")
        else:
            out[column.name] = series.astype(object).where(series.notna(), None)
    return pd.DataFrame(out, columns=plan.column_names)
