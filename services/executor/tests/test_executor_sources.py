from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lomas_common.errors import FailedPrecondition, InvalidArgument
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.sources import DataFormat, DataSource, SourceKind, load_table


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


def test_sources_are_validated_and_s3_is_declared_but_not_read_yet() -> None:
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
    with pytest.raises(FailedPrecondition, match="S3 data sources are not supported"):
        load_table(s3, DataFormat.CSV)
