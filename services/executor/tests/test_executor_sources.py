from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lomas_common.errors import BackendUnavailable, FailedPrecondition, InvalidArgument
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.sources import (
    DataFormat,
    DataSource,
    S3Credentials,
    S3Secrets,
    SourceKind,
    load_table,
)
from lomas_testing.data_servers import S3Server


def _check_penguin_table(table: pa.Table, frame: pd.DataFrame) -> None:
    assert table.num_rows == 344
    assert table.column_names == list(frame.columns)
    assert table.schema.field("bill_length_mm").type == pa.float64()
    assert table.schema.field("species").type == pa.string()
    assert table.column("sex").null_count == int(frame["sex"].isna().sum())
    assert table.column("body_mass_g").null_count == 2
    pd.testing.assert_frame_equal(table.to_pandas(), frame, check_dtype=False)


def test_local_csv_is_read_with_the_metadata_types(
    penguin_csv: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    table = load_table(
        DataSource.local(penguin_csv), DataFormat.CSV, schema=penguin_md.arrow_schema()
    )
    _check_penguin_table(table, penguin_frame)


def test_local_parquet_is_read(tmp_path: Path, penguin_frame: pd.DataFrame) -> None:
    path = tmp_path / "penguin.parquet"
    penguin_frame.to_parquet(path, index=False)
    _check_penguin_table(load_table(DataSource.local(path), DataFormat.PARQUET), penguin_frame)


def test_missing_file_fails_without_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "secret-location" / "data.csv"
    with pytest.raises(FailedPrecondition) as caught:
        load_table(DataSource.local(path), DataFormat.CSV)
    assert "secret-location" not in caught.value.message
    assert caught.value.message == "the dataset's data file was not found"


def test_unreadable_data_fails_without_quoting_cells(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex\n"
        "Adelie,Dream,SECRET-42,18.0,190,3700,MALE\n"
    )
    with pytest.raises(FailedPrecondition) as caught:
        load_table(DataSource.local(path), DataFormat.CSV, schema=penguin_md.arrow_schema())
    assert "SECRET-42" not in caught.value.message
    assert caught.value.message.startswith("the dataset's data could not be read as CSV")
    with pytest.raises(FailedPrecondition, match="could not be read as PARQUET"):
        load_table(DataSource.local(path), DataFormat.PARQUET)


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_source_is_read(
    http_root: tuple[Path, str], penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    root, base_url = http_root
    penguin_frame.to_csv(root / "penguin.csv", index=False)
    penguin_frame.to_parquet(root / "penguin.parquet", index=False)
    csv_table = load_table(
        DataSource.http(f"{base_url}/penguin.csv"),
        DataFormat.CSV,
        schema=penguin_md.arrow_schema(),
    )
    _check_penguin_table(csv_table, penguin_frame)
    parquet_table = load_table(DataSource.http(f"{base_url}/penguin.parquet"), DataFormat.PARQUET)
    _check_penguin_table(parquet_table, penguin_frame)
    with pytest.raises(FailedPrecondition, match="HTTP source answered 404"):
        load_table(DataSource.http(f"{base_url}/missing.csv"), DataFormat.CSV)


def test_sources_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="http:// or https://"):
        DataSource.http("file:///etc/passwd")
    with pytest.raises(InvalidArgument, match="needs a path"):
        DataSource.local("")
    with pytest.raises(InvalidArgument, match="bucket and a key"):
        DataSource.s3("bucket", "")
    s3 = DataSource.s3(
        "lomas", "penguin.csv", endpoint_url="http://127.0.0.1:9000", credentials_name="minio"
    )
    assert s3.kind is SourceKind.S3
    assert (s3.bucket, s3.key, s3.endpoint_url, s3.credentials_name) == (
        "lomas",
        "penguin.csv",
        "http://127.0.0.1:9000",
        "minio",
    )
    # The credentials name is resolved in the server's secrets, never taken from the source.
    with pytest.raises(FailedPrecondition, match="no S3 credentials named 'minio'"):
        load_table(s3, DataFormat.CSV)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def test_s3_sources_are_read_with_named_credentials(
    s3_server: S3Server, tmp_path: Path, penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    s3_server.put("lomas-data", "penguin.csv", penguin_frame.to_csv(index=False).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(penguin_frame, preserve_index=False), sink)
    s3_server.put("lomas-data", "dir/penguin.parquet", sink.getvalue().to_pybytes())
    secrets = S3Secrets.from_file(s3_server.write_credentials_file(tmp_path / "s3.json", "moto"))
    assert "moto" in secrets.credentials
    assert s3_server.secret_access_key not in repr(secrets)

    def source(key: str, credentials: str = "moto") -> DataSource:
        return DataSource.s3(
            "lomas-data", key, endpoint_url=s3_server.endpoint_url, credentials_name=credentials
        )

    csv_table = load_table(
        source("penguin.csv"), DataFormat.CSV, schema=penguin_md.arrow_schema(), s3_secrets=secrets
    )
    _check_penguin_table(csv_table, penguin_frame)
    parquet_table = load_table(
        source("dir/penguin.parquet"), DataFormat.PARQUET, s3_secrets=secrets
    )
    _check_penguin_table(parquet_table, penguin_frame)

    with pytest.raises(FailedPrecondition, match="S3 object was not found"):
        load_table(source("missing.csv"), DataFormat.CSV, s3_secrets=secrets)
    with pytest.raises(FailedPrecondition, match="no S3 credentials named 'other'"):
        load_table(source("penguin.csv", "other"), DataFormat.CSV, s3_secrets=secrets)
    wrong = S3Secrets({"moto": S3Credentials(s3_server.access_key_id, "not-the-secret")})
    with pytest.raises(FailedPrecondition, match="refused the request") as refused:
        load_table(source("penguin.csv"), DataFormat.CSV, s3_secrets=wrong)
    assert "not-the-secret" not in refused.value.message


def test_unreachable_s3_store_is_unavailable(tmp_path: Path) -> None:
    closed = DataSource.s3("b", "k", endpoint_url="http://127.0.0.1:9", credentials_name="x")
    secrets = S3Secrets({"x": S3Credentials("a", "b")})
    with pytest.raises(BackendUnavailable, match="unreachable"):
        load_table(closed, DataFormat.CSV, s3_secrets=secrets)


def test_credentials_files_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text("store:\n  access_key_id: A\n  secret_access_key: B\n  region: eu-west-1\n")
    assert S3Secrets.from_file(path).credentials["store"] == S3Credentials(
        "A", "B", region="eu-west-1"
    )
    path.write_text("store:\n  access_key_id: A\n")
    with pytest.raises(ValueError, match="lack 'secret_access_key'"):
        S3Secrets.from_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        S3Secrets.from_file(tmp_path / "absent.json")
