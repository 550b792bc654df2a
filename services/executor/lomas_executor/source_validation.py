"""What ValidateDataset checks in a dataset's source before the dataset is registered (or updated):
the file or object exists, it can be read with the credentials it names, it is in the declared
format, and it has every column of the metadata (for Parquet, also with a type the metadata's type
reads).

Only the source's structure is read, never its rows: a CSV's header line (from the first bytes of
the file) or a Parquet file's footer (its schema). Column names and types are schema, so messages
may name them; the administrator who calls this gave the location, so messages name it too. Extra
columns in the data are fine: the engines select the metadata's columns.

A CSV's column types can only be learnt by reading values, which this check never does; a CSV value
that does not parse as its metadata type fails when a worker loads the data.

Sources that stay where they are: a PostgreSQL table is checked in the database's catalog (it exists,
the credentials' role may read it, its columns and their types: `pushdown_postgres`); a Spark
folder on the executors' file system must hold Parquet files, whose schema (from one file's footer)
is compared as a Parquet file's is. A Spark folder given as a URI that only the Spark cluster reads
(hdfs://, s3a://...) cannot be checked here: it is accepted as it is, and a mismatch shows when a
worker first queries it.
"""

from __future__ import annotations

import io
import logging
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lomas_common.errors import FailedPrecondition, InvalidArgument, InvalidMetadata
from lomas_executor.metadata import ColumnType, DatasetMetadata
from lomas_executor.pushdown_postgres import check_postgres_source
from lomas_executor.sources import (
    HTTP_TIMEOUT_SECONDS,
    DataFormat,
    DataSource,
    S3Secrets,
    SourceKind,
    check_source,
    is_local_path,
    local_path,
    s3_client,
)

_log = logging.getLogger(__name__)

# A CSV header line longer than this is refused (the check reads no further).
MAX_HEADER_BYTES = 1024 * 1024
# A Parquet footer (the schema and row-group index) larger than this is refused.
MAX_FOOTER_BYTES = 64 * 1024 * 1024
# The first read of a CSV file's start or a Parquet file's end; a longer header or a larger footer
# takes a second read.
_FIRST_READ_BYTES = 64 * 1024
_PARQUET_MAGIC = b"PAR1"
# Column names quoted in a message, at most.
_NAMES_SHOWN = 20


def check_dataset_source(
    source: DataSource, fmt: DataFormat, metadata: DatasetMetadata, s3_secrets: S3Secrets
) -> None:
    """Refuse a source that cannot be read or does not match `metadata` (see the module docstring).

    Raises FailedPrecondition (DATASET_SOURCE_UNAVAILABLE) when the source is missing or refuses
    the read, InvalidArgument (DATASET_FORMAT_INVALID) when it is not in `fmt`, and InvalidMetadata
    (METADATA_INVALID) when its columns do not match the metadata's.
    """
    if source.kind is SourceKind.POSTGRES:
        check_postgres_source(source, metadata, s3_secrets)
        return
    if source.kind is SourceKind.SPARK:
        if is_local_path(source.path):
            schema = _parquet_folder_schema(source)
            _compare_names(schema.names, metadata)
            _compare_types(schema, metadata)
        else:
            _log.warning(
                "Spark source %s accepted unchecked (not on this file system)", source.path
            )
        return
    if source.kind is SourceKind.S3:
        check_source(source, s3_secrets)  # credentials this executor does not hold
    reader = _ByteReader(source, s3_secrets)
    if fmt is DataFormat.CSV:
        _compare_names(_csv_header(reader), metadata)
    else:
        schema = _parquet_schema(reader)
        _compare_names(schema.names, metadata)
        _compare_types(schema, metadata)


# -- comparing -------------------------------------------------------------------------------------


def _compare_names(names: list[str], metadata: DatasetMetadata) -> None:
    present = set(names)
    missing = [name for name in metadata.column_names if name not in present]
    if missing:
        raise InvalidMetadata(
            f"the metadata names {_count(len(missing), 'column')} the data does not have: "
            f"{_names(missing)} (the data's columns: {_names(names)})"
        )


def _compare_types(schema: pa.Schema, metadata: DatasetMetadata) -> None:
    for name in metadata.column_names:
        data_type = schema.field(name).type
        wanted = metadata.column_type(name)
        if not _reads_as(data_type, wanted):
            raise InvalidMetadata(
                f"column {name!r} is {data_type} in the data, but the metadata says {wanted}"
            )


def _reads_as(data_type: pa.DataType, wanted: ColumnType) -> bool:
    """Whether the engines read a Parquet column of `data_type` as `wanted` whatever its values
    (a cast that could fail on some value is refused now rather than after a charge)."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    if pa.types.is_null(data_type):  # a column of nulls only
        return True
    if wanted == "int":
        return bool(pa.types.is_integer(data_type))
    if wanted == "float":
        return bool(
            pa.types.is_integer(data_type)
            or pa.types.is_floating(data_type)
            or pa.types.is_decimal(data_type)
        )
    if wanted == "string":
        return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))
    if wanted == "boolean":
        return bool(pa.types.is_boolean(data_type))
    return bool(pa.types.is_timestamp(data_type) or pa.types.is_date(data_type))


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# -- reading the structure -------------------------------------------------------------------------


def _csv_header(reader: _ByteReader) -> list[str]:
    """The column names of a CSV's header line, parsed as workers parse it (Arrow's reader)."""
    head = reader.head(_FIRST_READ_BYTES)
    if len(head) == _FIRST_READ_BYTES and b"\n" not in head:  # a long header: read up to the limit
        head = reader.head(MAX_HEADER_BYTES + 1)
    if not head:
        raise _format_invalid(reader, "CSV", "the file is empty (a CSV needs a header line)")
    end = head.find(b"\n")
    if end < 0 and len(head) > MAX_HEADER_BYTES:
        raise _format_invalid(reader, "CSV", "its header line is longer than 1 MiB")
    line = head[: end + 1] if end >= 0 else head + b"\n"  # the file may be its header alone
    options = pa_csv.ReadOptions(block_size=len(line) + 1024)
    try:
        return list(pa_csv.read_csv(pa.BufferReader(line), read_options=options).column_names)
    except UnicodeDecodeError:
        raise _format_invalid(reader, "CSV", "its header is not UTF-8 text") from None
    except (pa.ArrowException, ValueError):
        raise _format_invalid(reader, "CSV", "its header line cannot be parsed") from None


def _parquet_schema(reader: _ByteReader) -> pa.Schema:
    tail = reader.tail(_FIRST_READ_BYTES)
    if len(tail) < 12 or tail[-4:] != _PARQUET_MAGIC:
        raise _format_invalid(reader, "PARQUET", "it does not end with a Parquet footer")
    (footer_size,) = struct.unpack("<I", tail[-8:-4])
    if footer_size + 8 > MAX_FOOTER_BYTES:
        raise _format_invalid(reader, "PARQUET", "its footer is larger than 64 MiB")
    if footer_size + 8 > len(tail):
        tail = reader.tail(footer_size + 8)
    # The footer alone, behind a leading magic number, is what a Parquet reader needs for the
    # schema: no row group is read.
    footer = _PARQUET_MAGIC + tail[-(footer_size + 8) :]
    try:
        return pq.read_schema(pa.BufferReader(footer))
    except (pa.ArrowException, OSError, ValueError):
        raise _format_invalid(reader, "PARQUET", "its footer cannot be read") from None


def _parquet_folder_schema(source: DataSource) -> pa.Schema:
    """The schema of a local folder of Parquet files (one file's footer; no row is read)."""
    import pyarrow.dataset as pads

    folder = local_path(source.path)
    where = f"the folder {source.path}"
    if not folder.is_dir():
        raise _unavailable(f"{where} does not exist")
    try:
        dataset = pads.dataset(str(folder), format="parquet")
        schema, files = dataset.schema, dataset.files
    except (pa.ArrowException, OSError, ValueError):
        raise InvalidArgument(
            f"{where} cannot be read as PARQUET: a file's footer cannot be read",
            reason="DATASET_FORMAT_INVALID",
        ) from None
    if not files:
        raise InvalidArgument(f"{where} holds no Parquet file", reason="DATASET_FORMAT_INVALID")
    return schema


def _format_invalid(reader: _ByteReader, fmt: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{reader.where} cannot be read as {fmt}: {why}",
        reason="DATASET_FORMAT_INVALID",
    )


def _unavailable(message: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason="DATASET_SOURCE_UNAVAILABLE")


class _ByteReader:
    """The first or last bytes of a source: a local file, an HTTP(S) URL or an S3 object."""

    def __init__(self, source: DataSource, s3_secrets: S3Secrets) -> None:
        self._source = source
        self._s3_secrets = s3_secrets
        if source.kind is SourceKind.LOCAL:
            self.where = f"the file {source.path}"
        elif source.kind is SourceKind.HTTP:
            self.where = f"the URL {source.url}"
        else:
            self.where = f"the S3 object s3://{source.bucket}/{source.key}"

    def head(self, size: int) -> bytes:
        """Up to `size` bytes from the start."""
        if self._source.kind is SourceKind.LOCAL:
            return self._local(lambda file: file.read(size))
        if self._source.kind is SourceKind.HTTP:
            return self._http(f"bytes=0-{size - 1}", size, from_end=False)
        return self._s3(f"bytes=0-{size - 1}")

    def tail(self, size: int) -> bytes:
        """Up to `size` bytes from the end."""
        if self._source.kind is SourceKind.LOCAL:
            return self._local(lambda file: _read_tail(file, size))
        if self._source.kind is SourceKind.HTTP:
            return self._http(f"bytes=-{size}", size, from_end=True)
        return self._s3(f"bytes=-{size}")

    def _local(self, read: Callable[[BinaryIO], bytes]) -> bytes:
        try:
            with Path(self._source.path).open("rb") as file:
                return read(file)
        except FileNotFoundError:
            raise _unavailable(f"{self.where} does not exist") from None
        except OSError as exc:
            raise _unavailable(f"{self.where} cannot be read ({exc.strerror or 'error'})") from None

    def _http(self, byte_range: str, size: int, *, from_end: bool) -> bytes:
        # The scheme is checked to be http(s) when the DataSource is built.
        request = urllib.request.Request(self._source.url, headers={"Range": byte_range})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
                if response.status == 206 or not from_end:  # a range, or a start that is one
                    data: bytes = response.read(size)
                    return data
                # The server ignored the range and sends the whole file: keep only its end.
                return _read_tail_of_stream(response, size)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # no byte to give: an empty file
                return b""
            raise _unavailable(f"{self.where} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError):
            _log.warning("HTTP data source unreachable: %s", self._source.url, exc_info=True)
            raise _unavailable(f"{self.where} cannot be reached") from None

    def _s3(self, byte_range: str) -> bytes:
        import botocore.exceptions

        source = self._source
        try:
            client = s3_client(source, self._s3_secrets)
            response = client.get_object(Bucket=source.bucket, Key=source.key, Range=byte_range)
            data: bytes = response["Body"].read()
            return data
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":  # no byte to give: an empty object
                return b""
            _log.warning("S3 source %s/%s answered %s", source.bucket, source.key, code)
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise _unavailable(f"{self.where} does not exist") from None
            credentials = source.credentials_name or "the executor's default credentials"
            raise _unavailable(
                f"{self.where} cannot be read with {credentials} ({code or 'refused'})"
            ) from None
        except (botocore.exceptions.BotoCoreError, OSError):
            _log.warning("S3 store unreachable: %s", source.endpoint_url, exc_info=True)
            raise _unavailable(f"the S3 store of {self.where} cannot be reached") from None


def _read_tail(file: BinaryIO, size: int) -> bytes:
    length = file.seek(0, io.SEEK_END)
    file.seek(max(0, length - size))
    return file.read(size)


def _read_tail_of_stream(stream: Any, size: int, chunk: int = 1024 * 1024) -> bytes:
    kept = b""
    while block := stream.read(chunk):
        kept = (kept + block)[-size:]
    return kept
