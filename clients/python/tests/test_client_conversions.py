"""The handwritten client's pure conversions: exact decimals, privacy losses, frames, sources."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest

from lomas.client import BackendUnavailable, Client
from lomas.client.admin import (
    DATA_FORMATS,
    approx_dp,
    format_from_path,
    local_source,
    pure_dp,
    rho_zcdp,
    s3_source,
    url_source,
)
from lomas.client.client import SmartnoiseSqlClient, frame_from_ipc, loss_to_dict
from lomas.client.options import decimal_text as _decimal_text
from lomas.common.v1 import dataset_pb2, privacy_pb2, query_pb2
from lomas_embedded.ports import free_port


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_parameters_travel_as_exact_decimal_text() -> None:
    # A float goes through its shortest repr, never through binary expansion.
    assert _decimal_text(0.1, "epsilon") == "0.1"
    assert _decimal_text(1e-05, "delta") == "1e-05"
    assert _decimal_text(Decimal("0.30"), "epsilon") == "0.30"
    assert _decimal_text(3, "epsilon") == "3"
    assert _decimal_text("2.5", "epsilon") == "2.5"


@pytest.mark.parametrize("value", [True, None, [1], object()])
def test_a_non_number_parameter_is_refused_by_name(value: object) -> None:
    with pytest.raises(TypeError, match="epsilon must be a number"):
        _decimal_text(cast(Any, value), "epsilon")  # callers without type checking


def test_privacy_losses_become_exact_decimals_keyed_like_lomas() -> None:
    approx = privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0.1", delta="0.00001"))
    assert loss_to_dict(approx, "remaining_") == {
        "remaining_epsilon": Decimal("0.1"),
        "remaining_delta": Decimal("0.00001"),
    }
    pure = privacy_pb2.PrivacyLoss(pure_dp=privacy_pb2.PureDp(epsilon="2"))
    assert loss_to_dict(pure) == {"epsilon": Decimal("2"), "delta": Decimal(0)}
    rho = privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho="0.125"))
    assert loss_to_dict(rho, "initial_") == {"initial_rho": Decimal("0.125")}
    assert loss_to_dict(privacy_pb2.PrivacyLoss()) == {}


def test_the_admin_helpers_build_each_kind_of_loss() -> None:
    assert approx_dp(0.5, Decimal("1e-5")).approx_dp == privacy_pb2.ApproxDp(
        epsilon="0.5", delta="0.00001"
    )
    assert pure_dp("1.25").pure_dp.epsilon == "1.25"
    assert rho_zcdp(0.1).rho_zcdp.rho == "0.1"


def test_a_release_stream_becomes_a_frame() -> None:
    table = pa.table({"species": ["Adelie", "Gentoo"], "n": [152, 124]})
    frame = frame_from_ipc(ipc(table))
    assert list(frame.columns) == ["species", "n"]
    assert frame["n"].tolist() == [152, 124]
    assert frame_from_ipc(b"").empty  # a failed or empty release


def test_a_sql_query_is_post_processed_unless_asked_otherwise() -> None:
    query = SmartnoiseSqlClient._query(
        "SELECT COUNT(*) AS n FROM df", 1.0, 1e-5, {"count": "laplace"}, True
    )
    sql = query.smartnoise_sql
    assert (sql.sql, sql.epsilon, sql.delta) == ("SELECT COUNT(*) AS n FROM df", "1.0", "1e-05")
    assert dict(sql.mechanisms) == {"count": "laplace"}
    assert sql.postprocess is True
    raw = SmartnoiseSqlClient._query("SELECT 1 FROM df", "1", "0", None, False)
    assert raw.smartnoise_sql.postprocess is False
    assert isinstance(raw, query_pb2.Query)


class RecordingClient:
    """Stands for `Client` under a SmartNoise-SQL client: records what `submit` is given."""

    def __init__(self) -> None:
        self.submitted: list[tuple[query_pb2.Query, dict[str, Any]]] = []

    def submit(self, query: query_pb2.Query, **options: Any) -> None:
        self.submitted.append((query, options))


def test_a_sql_submit_takes_its_query_options_by_keyword() -> None:
    recorder = RecordingClient()
    sql = SmartnoiseSqlClient(cast(Client, recorder))
    sql.submit(
        "SELECT COUNT(*) AS n FROM df",
        1.0,
        1e-5,
        mechanisms={"count": "gaussian"},
        postprocess=False,
        request_id="r-1",
        fresh=True,
    )
    sql.submit("SELECT 1 FROM df", "1", "0")
    (tuned, tuned_options), (plain, plain_options) = recorder.submitted
    assert dict(tuned.smartnoise_sql.mechanisms) == {"count": "gaussian"}
    assert tuned.smartnoise_sql.postprocess is False
    assert tuned_options == {"request_id": "r-1", "fresh": True}  # only the submit's own
    assert dict(plain.smartnoise_sql.mechanisms) == {}
    assert plain.smartnoise_sql.postprocess is True
    assert plain_options == {}
    # A misspelled keyword is refused, not silently dropped.
    with pytest.raises(TypeError, match="postproces"):
        sql.submit("SELECT 1 FROM df", "1", "0", **cast(Any, {"postproces": False}))


def test_formats_come_from_the_file_suffix() -> None:
    assert format_from_path("data/penguin.CSV") == dataset_pb2.DATA_FORMAT_CSV
    assert format_from_path("s3/key/penguin.parquet") == dataset_pb2.DATA_FORMAT_PARQUET
    assert set(DATA_FORMATS) == {"csv", "parquet", "table"}
    for name in ("penguin.json", "penguin.table"):  # a PostgreSQL table is no file
        with pytest.raises(ValueError, match="cannot tell the format"):
            format_from_path(name)


def test_sources_name_where_the_data_lives(tmp_path: Path) -> None:
    relative = Path("penguin.csv")
    assert Path(local_source(tmp_path / relative).local.path).is_absolute()
    assert url_source("https://example.org/p.csv").url.url == "https://example.org/p.csv"
    s3 = s3_source("bucket", "key.csv", "http://127.0.0.1:9000", "minio").s3
    assert (s3.bucket, s3.key, s3.endpoint_url, s3.credentials_name) == (
        "bucket",
        "key.csv",
        "http://127.0.0.1:9000",
        "minio",
    )


def test_a_platform_that_does_not_answer_is_an_unavailable_gateway() -> None:
    with Client(f"127.0.0.1:{free_port()}", "PENGUIN", token="t", timeout_seconds=2) as client:
        with pytest.raises(BackendUnavailable) as down:
            client.get_dataset_metadata()
    assert down.value.code == "UNAVAILABLE"
    assert down.value.metadata["peer"] == "gateway"
