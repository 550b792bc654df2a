"""Where a dataset's data lives and how to read it into an Arrow table.

A `DataSource` is one of: a local path, an HTTP(S) URL, or an S3 object (bucket, key, endpoint URL
and the *name* of credentials that the server resolves from its own secrets; never the secrets
themselves). Local and HTTP(S) are implemented; S3 is declared so that datasets can be registered
with it, and reading it fails with FAILED_PRECONDITION until the S3 reader (with credential
resolution) lands.

Errors never carry data values nor server paths: a parse error of a CSV may quote a cell, so the
message names only the format and the cause class.
"""

from __future__ import annotations

import enum
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lomas_common.errors import BackendUnavailable, FailedPrecondition, InvalidArgument

_log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 60.0
MAX_HTTP_BYTES = 4 * 1024**3


class SourceKind(enum.Enum):
    LOCAL = "local"
    HTTP = "http"
    S3 = "s3"


class DataFormat(enum.Enum):
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True, slots=True)
class DataSource:
    """The location of a dataset's data. Build it with `local`, `http` or `s3`."""

    kind: SourceKind
    path: str = ""  # LOCAL
    url: str = ""  # HTTP
    bucket: str = ""  # S3
    key: str = ""  # S3
    endpoint_url: str = ""  # S3 (empty: the provider's default endpoint)
    credentials_name: str = ""  # S3: name of credentials in the server's secrets

    def __post_init__(self) -> None:
        if self.kind is SourceKind.LOCAL and not self.path:
            raise InvalidArgument("a local data source needs a path")
        if self.kind is SourceKind.HTTP:
            scheme = urllib.parse.urlsplit(self.url).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument("an HTTP data source needs an http:// or https:// URL")
        if self.kind is SourceKind.S3 and not (self.bucket and self.key):
            raise InvalidArgument("an S3 data source needs a bucket and a key")

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


def load_table(source: DataSource, fmt: DataFormat, *, schema: pa.Schema | None = None) -> pa.Table:
    """Read the whole dataset into an Arrow table.

    `schema` (optional, see `DatasetMetadata.arrow_schema`) fixes the CSV column types instead of
    letting Arrow guess them; Parquet files carry their own types.
    """
    if source.kind is SourceKind.LOCAL:
        path = Path(source.path)
        if not path.is_file():
            _log.warning("local data source not found: %s", path)
            raise FailedPrecondition("the dataset's data file was not found")
        return _parse(pa.memory_map(str(path), "r"), fmt, schema)
    if source.kind is SourceKind.HTTP:
        return _parse(pa.BufferReader(_fetch(source.url)), fmt, schema)
    raise FailedPrecondition("S3 data sources are not supported by this executor yet")


def _fetch(url: str) -> bytes:
    try:
        # The scheme is checked to be http(s) when the DataSource is built.
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            body: bytes = response.read(MAX_HTTP_BYTES + 1)
    except urllib.error.HTTPError as exc:
        _log.warning("HTTP data source returned %s: %s", exc.code, url)
        if exc.code >= 500:
            raise BackendUnavailable("the dataset's HTTP source is unavailable") from None
        raise FailedPrecondition(f"the dataset's HTTP source answered {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError):
        _log.warning("HTTP data source unreachable: %s", url, exc_info=True)
        raise BackendUnavailable("the dataset's HTTP source is unreachable") from None
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
    except (pa.ArrowException, OSError, ValueError) as exc:
        # The library's message may quote a cell: log it, never return it.
        _log.warning("could not parse dataset as %s", fmt.value, exc_info=True)
        raise FailedPrecondition(
            f"the dataset's data could not be read as {fmt.value.upper()} ({type(exc).__name__})"
        ) from None
    finally:
        stream.close()
