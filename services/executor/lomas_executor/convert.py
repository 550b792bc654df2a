"""Executor messages <-> executor domain values (the one module that touches both)."""

from __future__ import annotations

import json
from decimal import Decimal

from lomas.common.v1 import dataset_pb2, query_pb2
from lomas_common.convert import metadata_from_json, same_named
from lomas_common.errors import InvalidArgument, InvalidQuery
from lomas_common.privacy import PrivacyValueError, parse_decimal
from lomas_executor.accuracy import ColumnAccuracy
from lomas_executor.canonical import canonical_decimal, canonical_json
from lomas_executor.diffprivlib_model import (
    DEFAULT_IMPUTER_STRATEGY,
    DEFAULT_TEST_SIZE,
    DiffPrivLibQuery,
    canonical_pipeline_json,
    canonical_score_epsilon,
    score_epsilon_from_text,
    test_size_from_text,
)
from lomas_executor.engine import DatasetRef, Query
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_json import canonical_measurement_json
from lomas_executor.opendp_model import Mechanism, OpenDpMeasurementQuery, OpenDpPolarsQuery
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery
from lomas_executor.sources import DataFormat, DataSource, SourceKind

_FORMATS = {
    dataset_pb2.DATA_FORMAT_CSV: DataFormat.CSV,
    dataset_pb2.DATA_FORMAT_PARQUET: DataFormat.PARQUET,
    dataset_pb2.DATA_FORMAT_TABLE: DataFormat.TABLE,
}
_MECHANISMS: dict[query_pb2.OpenDpMechanism.ValueType, Mechanism] = {
    query_pb2.OPEN_DP_MECHANISM_UNSPECIFIED: "laplace",
    query_pb2.OPEN_DP_MECHANISM_LAPLACE: "laplace",
    query_pb2.OPEN_DP_MECHANISM_GAUSSIAN: "gaussian",
}


def source_from_proto(source: dataset_pb2.DataSource) -> DataSource:
    kind = source.WhichOneof("location")
    if kind == "local":
        return DataSource.local(source.local.path)
    if kind == "url":
        return DataSource.http(source.url.url)
    if kind == "s3":
        return DataSource.s3(
            source.s3.bucket,
            source.s3.key,
            endpoint_url=source.s3.endpoint_url,
            credentials_name=source.s3.credentials_name,
        )
    if kind == "postgres":
        return DataSource.postgres(
            source.postgres.credentials_name, source.postgres.schema, source.postgres.table
        )
    if kind == "spark":
        return DataSource.spark(source.spark.path)
    raise InvalidArgument("dataset source must be set", reason="DATASET_SOURCE_INVALID")


def metadata_from_proto(descriptor: dataset_pb2.DatasetDescriptor) -> DatasetMetadata:
    return DatasetMetadata.from_dict(metadata_from_json(descriptor.metadata_json))


def dataset_from_proto(descriptor: dataset_pb2.DatasetDescriptor) -> DatasetRef:
    source = source_from_proto(descriptor.source)
    fmt = _FORMATS.get(descriptor.format)
    if fmt is None or (fmt is DataFormat.TABLE) != (source.kind is SourceKind.POSTGRES):
        raise InvalidArgument(
            "dataset format must be TABLE for a PostgreSQL source, CSV or PARQUET for a file",
            reason="DATASET_FORMAT_INVALID",
        )
    if source.kind is SourceKind.SPARK and fmt is not DataFormat.PARQUET:
        raise InvalidArgument(
            "a Spark source is a folder of Parquet files: its format must be PARQUET",
            reason="DATASET_FORMAT_INVALID",
        )
    return DatasetRef(
        name=descriptor.name,
        version=descriptor.version,
        source=source,
        fmt=fmt,
        metadata=metadata_from_proto(descriptor),
    )


def normalised_descriptor(
    descriptor: dataset_pb2.DatasetDescriptor,
) -> dataset_pb2.DatasetDescriptor:
    """The descriptor with validated, normalised metadata (what the admin store keeps)."""
    dataset_from_proto(descriptor)  # validates source and format too
    result = dataset_pb2.DatasetDescriptor()
    result.CopyFrom(descriptor)
    result.metadata_json = json.dumps(metadata_from_proto(descriptor).to_dict())
    return result


def query_from_proto(query: query_pb2.Query) -> Query:
    kind = query.WhichOneof("kind")
    if kind == "smartnoise_sql":
        sql = query.smartnoise_sql
        return SmartnoiseSqlQuery(
            sql=sql.sql,
            epsilon=_query_decimal(sql.epsilon or "0", "epsilon"),
            delta=_query_decimal(sql.delta or "0", "delta"),
            mechanisms=dict(sql.mechanisms),
            # Absent means post-processed, as every client documents (proto3 `optional`).
            postprocess=sql.postprocess if sql.HasField("postprocess") else True,
        )
    if kind == "opendp":
        return _opendp_from_proto(query.opendp)
    if kind == "diffprivlib":
        return _diffprivlib_from_proto(query.diffprivlib)
    if kind == "smartnoise_synth":
        return _smartnoise_synth_from_proto(query.smartnoise_synth)
    raise InvalidQuery("query must be set")


def _query_decimal(text: str, name: str) -> Decimal:
    """A decimal parameter of a query; malformed text is the query's fault (QUERY_INVALID)."""
    try:
        return parse_decimal(text, name=name)
    except PrivacyValueError as error:
        raise InvalidQuery(str(error)) from None


def _diffprivlib_from_proto(query: query_pb2.DiffPrivLibQuery) -> DiffPrivLibQuery:
    return DiffPrivLibQuery(
        pipeline_json=query.pipeline_json,
        feature_columns=tuple(query.feature_columns),
        target_columns=tuple(query.target_columns),
        test_size=test_size_from_text(query.test_size),
        test_train_split_seed=query.test_train_split_seed,
        imputer_strategy=query.imputer_strategy or DEFAULT_IMPUTER_STRATEGY,
        score_epsilon=score_epsilon_from_text(query.score_epsilon),
    )


# The fields of a SmartNoise-Synth query that the message and the domain value share as they are.
_SYNTH_AS_IS = (
    "synth_name",
    "synth_params_json",
    "nullable",
    "constraints_json",
    "return_model",
    "condition",
    "nb_samples",
)


def _smartnoise_synth_from_proto(query: query_pb2.SmartnoiseSynthQuery) -> SmartnoiseSynthQuery:
    return SmartnoiseSynthQuery(
        epsilon=_query_decimal(query.epsilon or "0", "epsilon"),
        delta=_query_decimal(query.delta, "delta") if query.delta else None,
        select_cols=tuple(query.select_cols),
        **same_named(query, *_SYNTH_AS_IS),
    )


def _opendp_from_proto(
    query: query_pb2.OpenDpQuery,
) -> OpenDpMeasurementQuery | OpenDpPolarsQuery:
    fixed_delta = _query_decimal(query.fixed_delta, "fixed_delta") if query.fixed_delta else None
    form = query.WhichOneof("pipeline")
    if form == "measurement_json":
        return OpenDpMeasurementQuery(query.measurement_json, fixed_delta=fixed_delta)
    if form == "polars":
        polars = query.polars
        if polars.mechanism not in _MECHANISMS:
            raise InvalidQuery("unknown OpenDP mechanism")
        scale = (
            float(_query_decimal(polars.global_scale, "global_scale"))
            if polars.global_scale
            else None
        )
        return OpenDpPolarsQuery(
            plan_json=polars.plan_json,
            mechanism=_MECHANISMS[polars.mechanism],
            global_scale=scale,
            threshold=polars.threshold or None,
            fixed_delta=fixed_delta,
        )
    raise InvalidQuery("an OpenDP query needs a measurement or a Polars plan")


def canonical_query(query: query_pb2.Query, sql: str | None = None) -> query_pb2.Query:
    """The canonical form of `query`; `sql` is its canonical SQL text (see `canonical_sql`) when
    it is a SmartNoise-SQL query."""
    canonical = query_pb2.Query()
    canonical.CopyFrom(query)
    kind = query.WhichOneof("kind")
    if kind == "smartnoise_sql":
        snql = canonical.smartnoise_sql
        if sql is not None:
            snql.sql = sql
        snql.epsilon = canonical_decimal(snql.epsilon)
        snql.delta = canonical_decimal(snql.delta)
        if not snql.HasField("postprocess"):
            snql.postprocess = True  # absent means true
    elif kind == "opendp":
        opendp = canonical.opendp
        opendp.fixed_delta = canonical_decimal(opendp.fixed_delta) if opendp.fixed_delta else ""
        if opendp.WhichOneof("pipeline") == "measurement_json":
            opendp.measurement_json = canonical_measurement_json(opendp.measurement_json)
        elif opendp.WhichOneof("pipeline") == "polars":
            opendp.polars.plan_json = canonical_json(opendp.polars.plan_json)
            if opendp.polars.global_scale:
                opendp.polars.global_scale = canonical_decimal(opendp.polars.global_scale)
    elif kind == "diffprivlib":
        dpl = canonical.diffprivlib
        dpl.pipeline_json = canonical_pipeline_json(dpl.pipeline_json)
        dpl.test_size = canonical_decimal(dpl.test_size or str(DEFAULT_TEST_SIZE))
        dpl.imputer_strategy = dpl.imputer_strategy or DEFAULT_IMPUTER_STRATEGY
        dpl.score_epsilon = canonical_score_epsilon(dpl.score_epsilon)
    elif kind == "smartnoise_synth":
        synth = canonical.smartnoise_synth
        synth.synth_name = synth.synth_name.strip().lower()
        synth.epsilon = canonical_decimal(synth.epsilon)
        synth.delta = canonical_decimal(synth.delta) if synth.delta else ""
        for name in ("synth_params_json", "constraints_json"):
            text = getattr(synth, name)
            setattr(synth, name, canonical_json(text) if text.strip() else "")
    return canonical


def alpha_from_text(text: str) -> float:
    """A significance level: a decimal strictly between 0 and 1."""
    try:
        alpha = parse_decimal(text, name="alpha")
    except PrivacyValueError as exc:
        raise InvalidArgument(f"alpha: {exc}", metadata={"field": "alpha"}) from None
    if not 0 < alpha < 1:
        raise InvalidArgument(
            "alpha must be strictly between 0 and 1 (0.05 gives 95 % intervals)",
            metadata={"field": "alpha"},
        )
    return float(alpha)


def column_accuracy_to_proto(column: ColumnAccuracy) -> query_pb2.ColumnAccuracy:
    return query_pb2.ColumnAccuracy(
        column=column.column,
        half_width="" if column.half_width is None else repr(column.half_width),
        distribution=column.distribution,
    )
