"""The values an administrator sends: privacy losses as exact decimal text, data sources, formats.

`lomas.client.admin` re-exports them; the Lomas collection files (`lomas.client.lomas_formats`) are
read into them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from lomas.common.v1 import dataset_pb2, privacy_pb2

DATA_FORMATS: dict[str, dataset_pb2.DataFormat.ValueType] = {
    "csv": dataset_pb2.DATA_FORMAT_CSV,
    "parquet": dataset_pb2.DATA_FORMAT_PARQUET,
    "table": dataset_pb2.DATA_FORMAT_TABLE,  # a PostgreSQL table (`postgres_source`)
}
# The formats a file's name tells (a table has no file).
FILE_SUFFIXES = ("csv", "parquet")


def decimal_text(value: float | int | str | Decimal) -> str:
    """The text the platform parses exactly: a float's shortest round-trip form, a Decimal in
    positional notation (no exponent), anything else as it is written."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def approx_dp(
    epsilon: float | str | Decimal, delta: float | str | Decimal
) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(
        approx_dp=privacy_pb2.ApproxDp(epsilon=decimal_text(epsilon), delta=decimal_text(delta))
    )


def pure_dp(epsilon: float | str | Decimal) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(pure_dp=privacy_pb2.PureDp(epsilon=decimal_text(epsilon)))


def rho_zcdp(rho: float | str | Decimal) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho=decimal_text(rho)))


def format_from_path(path: str) -> dataset_pb2.DataFormat.ValueType:
    suffix = path.rsplit(".", 1)[-1].lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"cannot tell the format of {path!r}: use .csv or .parquet, or pass a format"
        )
    return DATA_FORMATS[suffix]


def local_source(path: str | Path) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path=str(Path(path).resolve())))


def url_source(url: str) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(url=dataset_pb2.UrlSource(url=url))


def s3_source(
    bucket: str, key: str, endpoint_url: str = "", credentials_name: str = ""
) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(
        s3=dataset_pb2.S3Source(
            bucket=bucket, key=key, endpoint_url=endpoint_url, credentials_name=credentials_name
        )
    )


def postgres_source(credentials_name: str, schema: str, table: str) -> dataset_pb2.DataSource:
    """A PostgreSQL table or view (register it with format "table"): `credentials_name` names the
    connection in the workers' secrets (LOMAS_POSTGRES_CREDENTIALS_FILE), never the password."""
    return dataset_pb2.DataSource(
        postgres=dataset_pb2.PostgresSource(
            credentials_name=credentials_name, schema=schema, table=table
        )
    )


def spark_source(path: str | Path) -> dataset_pb2.DataSource:
    """A folder of Parquet files read by Spark (format "parquet"): a local folder (made absolute)
    or a URI the Spark cluster reads (hdfs://, s3a://...)."""
    text = str(path)
    if "://" not in text:
        text = str(Path(text).resolve())
    return dataset_pb2.DataSource(spark=dataset_pb2.SparkSource(path=text))


def source_location(source: dataset_pb2.DataSource) -> str:
    """Where a source points, as an administrator writes it (a path, a URL, s3://bucket/key)."""
    kind = source.WhichOneof("location")
    if kind == "local":
        return source.local.path
    if kind == "url":
        return source.url.url
    if kind == "s3":
        return f"s3://{source.s3.bucket}/{source.s3.key}"
    if kind == "postgres":
        postgres = source.postgres
        return f"postgres://{postgres.credentials_name}/{postgres.schema}.{postgres.table}"
    if kind == "spark":
        return f"spark:{source.spark.path}"
    return ""


def loss_components(loss: privacy_pb2.PrivacyLoss) -> dict[str, Decimal]:
    """A privacy loss's components by name ("epsilon", "delta", "rho"), as exact decimals; empty
    when the loss is unset."""
    kind = loss.WhichOneof("loss")
    if kind == "approx_dp":
        text = {"epsilon": loss.approx_dp.epsilon, "delta": loss.approx_dp.delta}
    elif kind == "pure_dp":
        text = {"epsilon": loss.pure_dp.epsilon}
    elif kind == "rho_zcdp":
        text = {"rho": loss.rho_zcdp.rho}
    else:
        return {}
    return {name: Decimal(value or "0") for name, value in text.items()}


def loss_from_components(
    kind: str, components: Mapping[str, float | str | Decimal]
) -> privacy_pb2.PrivacyLoss:
    """The inverse of `loss_components` for a loss of `kind` ("approx_dp", "pure_dp",
    "rho_zcdp")."""
    if kind == "approx_dp":
        return approx_dp(components["epsilon"], components["delta"])
    if kind == "pure_dp":
        return pure_dp(components["epsilon"])
    if kind == "rho_zcdp":
        return rho_zcdp(components["rho"])
    raise ValueError(f"unknown privacy definition {kind!r} (approx_dp, pure_dp or rho_zcdp)")
