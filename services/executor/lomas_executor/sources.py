"""Where a dataset's data lives and how to read it into an Arrow table.

A `DataSource` is one of: a local path, an HTTP(S) URL, an S3 object (bucket, key, endpoint URL
and the *name* of credentials), a PostgreSQL table (the *name* of connection credentials, a schema
and a table) or a folder of Parquet files read by Spark. The admin store keeps only names; the
workers resolve them in their own secrets (`SourceSecrets`):

* S3: the file that LOMAS_S3_CREDENTIALS_FILE names, a JSON or YAML mapping of credentials name to
  `access_key_id`, `secret_access_key`, and optionally `session_token` and `region`. An S3 source
  without a credentials name uses the standard AWS chain of the worker (environment, instance role).
* PostgreSQL: the file that LOMAS_POSTGRES_CREDENTIALS_FILE names, a mapping of credentials name to
  `host`, `dbname`, `user`, and optionally `port` (5432), `password` and `sslmode`. The role should
  be one that may SELECT on the registered table only (see `lomas_executor.pushdown_postgres`).

File sources (local, HTTP, S3) are loaded whole into memory (`load_table`); PostgreSQL and Spark
sources never are: queries run where the data is (`SourceKind.pushdown`).

Errors never carry data values nor server paths: a parse error of a CSV may quote a cell, so the
message names only the format and the cause class.
"""

from __future__ import annotations

import enum
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import yaml

from lomas_common.errors import BackendUnavailable, FailedPrecondition, InvalidArgument
from lomas_executor.failures import chain_names

_log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 60.0
MAX_HTTP_BYTES = 4 * 1024**3
MAX_S3_BYTES = 16 * 1024**3
S3_TIMEOUT_SECONDS = 60.0


class SourceKind(enum.Enum):
    LOCAL = "local"
    HTTP = "http"
    S3 = "s3"
    POSTGRES = "postgres"
    SPARK = "spark"

    @property
    def pushdown(self) -> bool:
        """Whether queries run where the data is (never loaded into, nor cached by, a worker)."""
        return self in (SourceKind.POSTGRES, SourceKind.SPARK)


class DataFormat(enum.Enum):
    CSV = "csv"
    PARQUET = "parquet"
    TABLE = "table"  # the rows of a database table: a PostgreSQL source


# A PostgreSQL schema or table name a source may name: a plain lower-case identifier, which means
# the same quoted or not (PostgreSQL folds unquoted names to lower case).
_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class DataSource:
    """The location of a dataset's data. Build it with `local`, `http`, `s3`, `postgres` or
    `spark`."""

    kind: SourceKind
    path: str = ""  # LOCAL (a file), SPARK (a folder, or a URI the Spark cluster reads)
    url: str = ""  # HTTP
    bucket: str = ""  # S3
    key: str = ""  # S3
    endpoint_url: str = ""  # S3 (empty: the provider's default endpoint)
    credentials_name: str = ""  # S3, POSTGRES: name of credentials in the server's secrets
    schema: str = ""  # POSTGRES
    table: str = ""  # POSTGRES

    def __post_init__(self) -> None:
        if self.kind is SourceKind.LOCAL and not self.path:
            raise InvalidArgument("a local data source needs a path")
        if self.kind is SourceKind.HTTP:
            scheme = urllib.parse.urlsplit(self.url).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument("an HTTP data source needs an http:// or https:// URL")
        if self.kind is SourceKind.S3 and not (self.bucket and self.key):
            raise InvalidArgument("an S3 data source needs a bucket and a key")
        if self.kind is SourceKind.POSTGRES:
            if not self.credentials_name:
                raise InvalidArgument(
                    "a PostgreSQL data source needs the name of its credentials",
                    reason="DATASET_SOURCE_INVALID",
                )
            for what, name in (("schema", self.schema), ("table", self.table)):
                if not _SQL_NAME.fullmatch(name):
                    raise InvalidArgument(
                        f"a PostgreSQL data source's {what} must be a lower-case name of letters, "
                        "digits and underscores (at most 63, not starting with a digit)",
                        reason="DATASET_SOURCE_INVALID",
                    )
        if self.kind is SourceKind.SPARK and not self.path:
            raise InvalidArgument(
                "a Spark data source needs the path of its folder", reason="DATASET_SOURCE_INVALID"
            )

    @classmethod
    def local(cls, path: str | Path) -> DataSource:
        return cls(SourceKind.LOCAL, path=str(path))

    @classmethod
    def http(cls, url: str) -> DataSource:
        return cls(SourceKind.HTTP, url=url)

    @classmethod
    def s3(
        cls,
        bucket: str,
        key: str,
        *,
        endpoint_url: str = "",
        credentials_name: str = "",
    ) -> DataSource:
        return cls(
            SourceKind.S3,
            bucket=bucket,
            key=key,
            endpoint_url=endpoint_url,
            credentials_name=credentials_name,
        )

    @classmethod
    def postgres(cls, credentials_name: str, schema: str, table: str) -> DataSource:
        return cls(
            SourceKind.POSTGRES, credentials_name=credentials_name, schema=schema, table=table
        )

    @classmethod
    def spark(cls, path: str | Path) -> DataSource:
        return cls(SourceKind.SPARK, path=str(path))


@dataclass(frozen=True)
class S3Credentials:
    """One named S3 credential from the server's secrets (never stored in the admin store)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    region: str = ""


@dataclass(frozen=True)
class PostgresCredentials:
    """One named PostgreSQL connection from the server's secrets (never stored in the admin
    store): the role should be allowed to SELECT on the registered tables only."""

    host: str
    dbname: str
    user: str
    password: str = field(default="", repr=False)
    port: int = 5432
    sslmode: str = "prefer"

    @classmethod
    def from_mapping(cls, name: str, entry: Mapping[str, Any]) -> PostgresCredentials:
        try:
            return cls(
                host=str(entry["host"]),
                dbname=str(entry["dbname"]),
                user=str(entry["user"]),
                password=str(entry.get("password") or ""),
                port=int(entry.get("port") or 5432),
                sslmode=str(entry.get("sslmode") or "prefer"),
            )
        except KeyError as missing:
            raise ValueError(f"PostgreSQL credentials {name!r} lack {missing}") from None
        except (TypeError, ValueError):
            raise ValueError(f"PostgreSQL credentials {name!r}: port must be a number") from None


@dataclass(frozen=True)
class SourceSecrets:
    """The credentials a worker may use, by name: S3 (`credentials`) and PostgreSQL (`postgres`)."""

    credentials: Mapping[str, S3Credentials] = field(default_factory=dict)
    postgres: Mapping[str, PostgresCredentials] = field(default_factory=dict)

    def with_postgres_file(self, path: str | Path) -> SourceSecrets:
        """These secrets plus the PostgreSQL credentials of a JSON or YAML file mapping names to
        `{host, dbname, user, port, password, sslmode}`."""
        raw = _read_mapping(path, "PostgreSQL credentials")
        postgres: dict[str, PostgresCredentials] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict):
                raise ValueError(f"PostgreSQL credentials {name!r} must be a mapping")
            postgres[str(name)] = PostgresCredentials.from_mapping(str(name), entry)
        return SourceSecrets(self.credentials, postgres)

    @classmethod
    def from_file(cls, path: str | Path) -> SourceSecrets:
        """Read a JSON or YAML mapping `{name: {access_key_id, secret_access_key, ...}}`."""
        raw = _read_mapping(path, "S3 credentials")
        credentials: dict[str, S3Credentials] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict):
                raise ValueError(f"S3 credentials {name!r} must be a mapping")
            try:
                credentials[str(name)] = S3Credentials(
                    access_key_id=str(entry["access_key_id"]),
                    secret_access_key=str(entry["secret_access_key"]),
                    session_token=str(entry.get("session_token") or ""),
                    region=str(entry.get("region") or ""),
                )
            except KeyError as missing:
                raise ValueError(f"S3 credentials {name!r} lack {missing}") from None
        return cls(credentials)


# The name of `SourceSecrets` when it held S3 credentials only.
S3Secrets = SourceSecrets


def _read_mapping(path: str | Path, what: str) -> dict[Any, Any]:
    try:
        raw: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"the {what} file must map credentials names to credentials")
    return raw


def check_source(source: DataSource, s3_secrets: S3Secrets | None = None) -> None:
    """Refuse a source that certainly cannot be read, without reading any of its data: a missing
    local file or Spark folder on this machine, or S3 or PostgreSQL credentials this worker does
    not hold. (HTTP, S3 and PostgreSQL reachability can only be learnt by connecting; failures
    there come after data access.)"""
    secrets = s3_secrets or SourceSecrets()
    if source.kind is SourceKind.POSTGRES and source.credentials_name not in secrets.postgres:
        raise FailedPrecondition(
            f"the executor has no PostgreSQL credentials named {source.credentials_name!r}",
            reason="DATASET_SOURCE_UNAVAILABLE",
        )
    if source.kind is SourceKind.SPARK and is_local_path(source.path):
        if not Path(source.path).is_dir():
            _log.warning("Spark data folder not found: %s", source.path)
            raise FailedPrecondition(
                "the dataset's data folder was not found", reason="DATASET_SOURCE_UNAVAILABLE"
            )
    if source.kind is SourceKind.LOCAL and not Path(source.path).is_file():
        _log.warning("local data source not found: %s", source.path)
        raise FailedPrecondition(
            "the dataset's data file was not found", reason="DATASET_SOURCE_UNAVAILABLE"
        )
    if (
        source.kind is SourceKind.S3
        and source.credentials_name
        and source.credentials_name not in (s3_secrets or S3Secrets()).credentials
    ):
        raise FailedPrecondition(
            f"the executor has no S3 credentials named {source.credentials_name!r}",
            reason="DATASET_SOURCE_UNAVAILABLE",
        )


def is_local_path(path: str) -> bool:
    """Whether a Spark source's path is on this machine (not a URI such as hdfs:// or s3a://)."""
    scheme = urllib.parse.urlsplit(path).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:" is a drive, not a scheme


def local_path(path: str) -> Path:
    """The file-system path of a local Spark source's path (`file://` URIs included)."""
    split = urllib.parse.urlsplit(path)
    return Path(split.path) if split.scheme == "file" else Path(path)


def load_table(
    source: DataSource,
    fmt: DataFormat,
    *,
    schema: pa.Schema | None = None,
    s3_secrets: S3Secrets | None = None,
) -> pa.Table:
    """Read the whole dataset into an Arrow table.

    `schema` (optional, see `DatasetMetadata.arrow_schema`) fixes the CSV column types instead of
    letting Arrow guess them; Parquet files carry their own types. `s3_secrets` resolves the
    credentials name of an S3 source. PostgreSQL and Spark sources are never loaded whole.
    """
    if source.kind.pushdown:
        raise ValueError(f"a {source.kind.value} source is queried where it is, never loaded")
    if source.kind is SourceKind.LOCAL:
        path = Path(source.path)
        if not path.is_file():
            _log.warning("local data source not found: %s", path)
            raise FailedPrecondition("the dataset's data file was not found")
        return _parse(pa.memory_map(str(path), "r"), fmt, schema)
    if source.kind is SourceKind.HTTP:
        return _parse(pa.BufferReader(_fetch(source.url)), fmt, schema)
    return _parse(pa.BufferReader(_fetch_s3(source, s3_secrets or S3Secrets())), fmt, schema)


def s3_client(source: DataSource, secrets: S3Secrets) -> Any:
    """A boto3 client for an S3 source, signed with its named credentials from `secrets` (no name:
    the standard AWS chain of this process); FailedPrecondition when `secrets` lack the name."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {}
    if source.credentials_name:
        credentials = secrets.credentials.get(source.credentials_name)
        if credentials is None:
            raise FailedPrecondition(
                f"the executor has no S3 credentials named {source.credentials_name!r}"
            )
        options = {
            "aws_access_key_id": credentials.access_key_id,
            "aws_secret_access_key": credentials.secret_access_key,
            "aws_session_token": credentials.session_token or None,
            "region_name": credentials.region or "us-east-1",
        }
    config = Config(
        connect_timeout=S3_TIMEOUT_SECONDS,
        read_timeout=S3_TIMEOUT_SECONDS,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=source.endpoint_url or None, config=config, **options)


def _fetch_s3(source: DataSource, secrets: S3Secrets) -> bytes:
    import botocore.exceptions

    try:
        client = s3_client(source, secrets)
        response = client.get_object(Bucket=source.bucket, Key=source.key)
        if int(response.get("ContentLength", 0)) > MAX_S3_BYTES:
            raise FailedPrecondition("the dataset's S3 object is larger than the executor accepts")
        body: bytes = response["Body"].read()
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        _log.warning("S3 source %s/%s answered %s", source.bucket, source.key, code)
        if status >= 500:
            raise BackendUnavailable("the dataset's S3 store is unavailable", peer="s3") from None
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FailedPrecondition("the dataset's S3 object was not found") from None
        raise FailedPrecondition(
            f"the dataset's S3 store refused the request ({code or status})"
        ) from None
    except (botocore.exceptions.BotoCoreError, OSError):
        _log.warning("S3 source unreachable: %s", source.endpoint_url, exc_info=True)
        raise BackendUnavailable("the dataset's S3 store is unreachable", peer="s3") from None
    return body


def _fetch(url: str) -> bytes:
    try:
        # The scheme is checked to be http(s) when the DataSource is built.
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            body: bytes = response.read(MAX_HTTP_BYTES + 1)
    except urllib.error.HTTPError as exc:
        _log.warning("HTTP data source returned %s: %s", exc.code, url)
        if exc.code >= 500:
            raise BackendUnavailable(
                "the dataset's HTTP source is unavailable", peer="http"
            ) from None
        raise FailedPrecondition(f"the dataset's HTTP source answered {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError):
        _log.warning("HTTP data source unreachable: %s", url, exc_info=True)
        raise BackendUnavailable("the dataset's HTTP source is unreachable", peer="http") from None
    if len(body) > MAX_HTTP_BYTES:
        raise FailedPrecondition("the dataset's HTTP source is larger than the executor accepts")
    return body


def _parse(stream: pa.NativeFile, fmt: DataFormat, schema: pa.Schema | None) -> pa.Table:
    try:
        if fmt is DataFormat.CSV:
            convert = pa_csv.ConvertOptions(
                column_types=schema,
                strings_can_be_null=True,
                true_values=["true", "True", "TRUE", "1"],
                false_values=["false", "False", "FALSE", "0"],
            )
            return pa_csv.read_csv(stream, convert_options=convert)
        return pq.read_table(stream)
    except MemoryError:
        raise  # the worker reports it as such (the memory limit), not as unreadable data
    except (pa.ArrowException, OSError, ValueError) as exc:
        # The library's message may quote a cell: log it, never return it.
        _log.warning("could not parse dataset as %s (%s)", fmt.value, chain_names(exc))
        raise FailedPrecondition(
            f"the dataset's data could not be read as {fmt.value.upper()} ({type(exc).__name__})"
        ) from None
    finally:
        stream.close()
