"""ValidateDataset checks a dataset's source before it is registered: the file or object exists, it
can be read with the credentials it names, it is in the declared format, and it has the metadata's
columns (with types the metadata's types read, for Parquet). Only the header or footer is read.

Local files, an HTTP server that ignores byte ranges (Python's) and a local S3 server (moto) with
signature checks; the last test goes through a real executor service and its free-call children."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lomas.common.v1 import dataset_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.errors import LomasError
from lomas_executor.demo import penguin_metadata_text
from lomas_executor.main import start
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import ExecutorSettings
from lomas_executor.source_validation import check_dataset_source
from lomas_executor.sources import DataFormat, DataSource, S3Credentials, S3Secrets
from lomas_testing.data_servers import S3Server
from lomas_testing.rich_status import error_info

CSV, PARQUET = DataFormat.CSV, DataFormat.PARQUET
NO_SECRETS = S3Secrets()


def refusal(
    source: DataSource,
    fmt: DataFormat,
    metadata: DatasetMetadata,
    secrets: S3Secrets = NO_SECRETS,
) -> LomasError:
    with pytest.raises(LomasError) as refused:
        check_dataset_source(source, fmt, metadata, secrets)
    return refused.value


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


@pytest.fixture()
def files(tmp_path: Path, penguin_frame: pd.DataFrame) -> Path:
    penguin_frame.to_csv(tmp_path / "penguin.csv", index=False)
    (tmp_path / "penguin.parquet").write_bytes(parquet_bytes(penguin_frame))
    return tmp_path


# -- local files -----------------------------------------------------------------------------------


def test_matching_local_files_pass(files: Path, penguin_md: DatasetMetadata) -> None:
    check_dataset_source(DataSource.local(files / "penguin.csv"), CSV, penguin_md, NO_SECRETS)
    check_dataset_source(
        DataSource.local(files / "penguin.parquet"), PARQUET, penguin_md, NO_SECRETS
    )
    # A header with a byte-order mark and quotes, and an extra column the metadata ignores.
    quoted = files / "quoted.csv"
    header = ",".join(f'"{name}"' for name in ["extra", *penguin_md.column_names])
    quoted.write_bytes(b"\xef\xbb\xbf" + header.encode() + b"\n")
    check_dataset_source(DataSource.local(quoted), CSV, penguin_md, NO_SECRETS)


def test_a_missing_or_unreadable_local_file_is_refused(
    files: Path, penguin_md: DatasetMetadata
) -> None:
    missing = refusal(DataSource.local(files / "absent.csv"), CSV, penguin_md)
    assert (missing.code.name, missing.reason) == (
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
    )
    assert missing.message == f"the file {files / 'absent.csv'} does not exist"
    folder = refusal(DataSource.local(files), CSV, penguin_md)
    assert folder.reason == "DATASET_SOURCE_UNAVAILABLE"
    assert folder.message == f"the file {files} cannot be read (Is a directory)"


def test_missing_columns_are_named(files: Path, penguin_md: DatasetMetadata) -> None:
    one = files / "one_missing.csv"
    one.write_text(",".join(name for name in penguin_md.column_names if name != "sex") + "\n")
    refused = refusal(DataSource.local(one), CSV, penguin_md)
    assert (refused.code.name, refused.reason) == ("INVALID_ARGUMENT", "METADATA_INVALID")
    assert refused.message.startswith("the metadata names 1 column the data does not have: 'sex'")
    other = files / "other.csv"
    other.write_text("a,b\n1,2\n")
    refused = refusal(DataSource.local(other), CSV, penguin_md)
    assert "names 7 columns the data does not have: 'species', 'island'" in refused.message
    assert refused.message.endswith("(the data's columns: 'a', 'b')")


def test_a_file_not_in_its_declared_format_is_refused(
    files: Path, penguin_md: DatasetMetadata
) -> None:
    as_parquet = refusal(DataSource.local(files / "penguin.csv"), PARQUET, penguin_md)
    assert (as_parquet.code.name, as_parquet.reason) == (
        "INVALID_ARGUMENT",
        "DATASET_FORMAT_INVALID",
    )
    assert "cannot be read as PARQUET: it does not end with a Parquet footer" in as_parquet.message
    empty = files / "empty.csv"
    empty.write_bytes(b"")
    refused = refusal(DataSource.local(empty), CSV, penguin_md)
    assert refused.reason == "DATASET_FORMAT_INVALID"
    assert "the file is empty" in refused.message
    binary = files / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00species\n")
    assert "not UTF-8" in refusal(DataSource.local(binary), CSV, penguin_md).message


def test_a_long_header_is_read_up_to_a_limit(files: Path, penguin_md: DatasetMetadata) -> None:
    columns = ",".join(penguin_md.column_names)
    long = files / "long.csv"
    long.write_text(f"{columns},{'x' * 200_000}\n1,2\n")  # past the first read, within the limit
    check_dataset_source(DataSource.local(long), CSV, penguin_md, NO_SECRETS)
    endless = files / "endless.csv"
    endless.write_text(f"{columns},{'x' * 1_100_000}\n")
    refused = refusal(DataSource.local(endless), CSV, penguin_md)
    assert refused.reason == "DATASET_FORMAT_INVALID"
    assert refused.message.endswith("its header line is longer than 1 MiB")


def test_parquet_column_types_must_read_as_the_metadata_says(
    files: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    # Categorical strings and integer masses are fine: they read as string and float.
    fine = penguin_frame.assign(
        species=penguin_frame["species"].astype("category"),
        body_mass_g=penguin_frame["body_mass_g"].fillna(0).astype("int64"),
    )
    (files / "fine.parquet").write_bytes(parquet_bytes(fine))
    check_dataset_source(DataSource.local(files / "fine.parquet"), PARQUET, penguin_md, NO_SECRETS)
    # Numbers where the metadata says string.
    wrong = penguin_frame.assign(island=1.5)
    (files / "wrong.parquet").write_bytes(parquet_bytes(wrong))
    refused = refusal(DataSource.local(files / "wrong.parquet"), PARQUET, penguin_md)
    assert refused.reason == "METADATA_INVALID"
    assert refused.message == "column 'island' is double in the data, but the metadata says string"


def test_a_large_parquet_footer_is_read_whole(tmp_path: Path) -> None:
    names = [f"a_rather_long_column_name_{number:04d}" for number in range(1500)]
    table = pa.table({name: pa.array([1, 2], pa.int64()) for name in names})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    assert pq.read_metadata(path).serialized_size > 64 * 1024  # more than the first read
    metadata = DatasetMetadata.from_dict(
        {
            "max_ids": 1,
            "rows": 2,
            "row_privacy": True,
            "columns": {name: {"type": "int"} for name in names},
        }
    )
    check_dataset_source(DataSource.local(path), PARQUET, metadata, NO_SECRETS)


# -- HTTP ------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def http_files(files: Path) -> Iterator[str]:
    """`files` over HTTP from Python's server, which ignores byte ranges (the whole file comes)."""
    handler = functools.partial(_QuietHandler, directory=str(files))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_sources(http_files: str, penguin_md: DatasetMetadata) -> None:
    check_dataset_source(DataSource.http(f"{http_files}/penguin.csv"), CSV, penguin_md, NO_SECRETS)
    parquet = DataSource.http(f"{http_files}/penguin.parquet")
    check_dataset_source(parquet, PARQUET, penguin_md, NO_SECRETS)
    missing = refusal(DataSource.http(f"{http_files}/absent.csv"), CSV, penguin_md)
    assert (missing.code.name, missing.reason) == (
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
    )
    assert missing.message == f"the URL {http_files}/absent.csv answered HTTP 404"
    closed = refusal(DataSource.http("http://127.0.0.1:9/penguin.csv"), CSV, penguin_md)
    assert closed.reason == "DATASET_SOURCE_UNAVAILABLE"
    assert closed.message == "the URL http://127.0.0.1:9/penguin.csv cannot be reached"


class _RangeHandler(_QuietHandler):
    """Serves byte ranges (`bytes=a-b`, `bytes=-n`) as S3 and most HTTP servers do, and counts
    the bytes it sends."""

    sent: list[int]

    def do_GET(self) -> None:
        wanted = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not wanted.startswith("bytes=") or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        if first:
            part = data[int(first) : int(last) + 1 if last else None]
        else:
            part = data[-int(last) :]
        start = len(data) - len(part) if not first else int(first)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)
        self.sent.append(len(part))


def test_only_the_header_or_the_footer_travels(
    files: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    """A large file over HTTP with byte ranges: the check fetches a bounded head or tail."""
    big = pd.concat([penguin_frame] * 300, ignore_index=True)  # about 100,000 rows
    big["noise"] = np.random.default_rng(0).random(len(big))  # a column that does not compress
    big.to_csv(files / "big.csv", index=False)
    (files / "big.parquet").write_bytes(parquet_bytes(big))
    sent: list[int] = []
    handler = functools.partial(
        type("Handler", (_RangeHandler,), {"sent": sent}), directory=str(files)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        check_dataset_source(DataSource.http(f"{base}/big.csv"), CSV, penguin_md, NO_SECRETS)
        check_dataset_source(
            DataSource.http(f"{base}/big.parquet"), PARQUET, penguin_md, NO_SECRETS
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    csv_size, parquet_size = (
        (files / "big.csv").stat().st_size,
        (files / "big.parquet").stat().st_size,
    )
    assert csv_size > 4 * 1024 * 1024 and parquet_size > 256 * 1024
    assert sent[0] == 64 * 1024  # the start of the CSV, where its header is
    assert sum(sent[1:]) <= 64 * 1024  # the Parquet file's end, where its footer is


# -- S3 --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def test_s3_sources_need_readable_objects_and_the_right_credentials(
    s3_server: S3Server, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata, tmp_path: Path
) -> None:
    s3_server.put("checked", "penguin.csv", penguin_frame.to_csv(index=False).encode())
    s3_server.put("checked", "data/penguin.parquet", parquet_bytes(penguin_frame))
    secrets = S3Secrets.from_file(s3_server.write_credentials_file(tmp_path / "s3.json", "moto"))

    def source(key: str, credentials: str = "moto") -> DataSource:
        return DataSource.s3(
            "checked", key, endpoint_url=s3_server.endpoint_url, credentials_name=credentials
        )

    check_dataset_source(source("penguin.csv"), CSV, penguin_md, secrets)
    check_dataset_source(source("data/penguin.parquet"), PARQUET, penguin_md, secrets)
    missing = refusal(source("absent.csv"), CSV, penguin_md, secrets)
    assert missing.reason == "DATASET_SOURCE_UNAVAILABLE"
    assert missing.message == "the S3 object s3://checked/absent.csv does not exist"
    unknown = refusal(source("penguin.csv", "nobody"), CSV, penguin_md, secrets)
    assert unknown.reason == "DATASET_SOURCE_UNAVAILABLE"
    assert unknown.message == "the executor has no S3 credentials named 'nobody'"
    wrong = S3Secrets({"moto": S3Credentials(s3_server.access_key_id, "not-the-secret")})
    refused = refusal(source("penguin.csv"), CSV, penguin_md, wrong)
    assert refused.reason == "DATASET_SOURCE_UNAVAILABLE"
    assert refused.message.startswith(
        "the S3 object s3://checked/penguin.csv cannot be read with moto ("
    )
    assert "not-the-secret" not in refused.message


# -- through the executor service ------------------------------------------------------------------


def test_validate_dataset_refuses_what_workers_could_not_load(
    s3_server: S3Server, penguin_frame: pd.DataFrame, files: Path, tmp_path: Path
) -> None:
    s3_server.put("service", "penguin.csv", penguin_frame.to_csv(index=False).encode())
    credentials = s3_server.write_credentials_file(tmp_path / "s3.json", "moto")
    settings = ExecutorSettings.from_env(
        {
            "LOMAS_LISTEN": "127.0.0.1:0",
            "LOMAS_FREE_CALL_WORKERS": "1",
            "LOMAS_FREE_CALL_SPARES": "0",
            "LOMAS_S3_CREDENTIALS_FILE": str(credentials),
        }
    )
    server, pool = start(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    metadata_json = json.dumps(yaml.safe_load(penguin_metadata_text()))

    def validate(source: dataset_pb2.DataSource) -> executor_pb2.ValidateDatasetResponse:
        dataset = dataset_pb2.DatasetDescriptor(
            name="PENGUIN",
            source=source,
            format=dataset_pb2.DATA_FORMAT_CSV,
            metadata_json=metadata_json,
        )
        request = executor_pb2.ValidateDatasetRequest(dataset=dataset)
        return stub.ValidateDataset(request, timeout=60)

    try:
        s3 = dataset_pb2.S3Source(
            bucket="service",
            key="penguin.csv",
            endpoint_url=s3_server.endpoint_url,
            credentials_name="moto",
        )
        validated = validate(dataset_pb2.DataSource(s3=s3))
        columns = json.loads(validated.dataset.metadata_json)["columns"]
        assert list(columns) == list(json.loads(metadata_json)["columns"])
        local = dataset_pb2.LocalSource(path=str(files / "penguin.csv"))
        assert validate(dataset_pb2.DataSource(local=local)).dataset.name == "PENGUIN"
        absent = dataset_pb2.LocalSource(path=str(files / "absent.csv"))
        with pytest.raises(grpc.RpcError) as refused:
            validate(dataset_pb2.DataSource(local=absent))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(refused.value).reason == "DATASET_SOURCE_UNAVAILABLE"
        assert str(files / "absent.csv") in str(refused.value.details())
    finally:
        channel.close()
        server.stop()
        pool.close()
