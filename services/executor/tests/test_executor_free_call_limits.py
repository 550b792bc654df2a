"""Sizes a query chooses are refused before anything is allocated, through a real executor server:
quickly, with QUERY_LIMIT_EXCEEDED naming the ceiling, and the service stays up. The real run
(`QueryEngine.run`, what the Celery worker calls) refuses them before it loads any data."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import opendp.prelude as dp
import pytest
import yaml

from lomas.common.v1 import dataset_pb2, query_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.errors import InvalidArgument, InvalidQuery
from lomas_executor import opendp_model
from lomas_executor import opendp_queries as oq
from lomas_executor.cache import DatasetCache
from lomas_executor.demo import penguin_metadata_text
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.main import start
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery
from lomas_executor.settings import ExecutorSettings, QueryLimits
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource
from lomas_testing.rich_status import error_info

dp.enable_features("contrib")


def dataset() -> dataset_pb2.DatasetDescriptor:
    return dataset_pb2.DatasetDescriptor(
        name="PENGUIN",
        version=1,
        format=dataset_pb2.DATA_FORMAT_CSV,
        metadata_json=json.dumps(yaml.safe_load(penguin_metadata_text())),
        source=dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path="/nowhere.csv")),
    )


class Executor:
    """A real executor service on port 0 (the production `start`), with a client stub."""

    def __init__(self, **env: str) -> None:
        settings = ExecutorSettings.from_env({"LOMAS_LISTEN": "127.0.0.1:0", **env})
        self.server, self.pool = start(settings)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = executor_pb2_grpc.ExecutorServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()
        self.pool.close()


def resize(columns: list[str], size: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measurement = (
            dp.t.make_split_dataframe(",", columns)
            >> dp.t.make_select_column("bill_length_mm", str)
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(40.0)
            >> dp.t.then_clamp((30.0, 65.0))
            >> dp.t.then_resize(size, 40.0)
            >> dp.t.then_mean()
            >> dp.m.then_laplace(1.0)
        )
    text: str = dp.serialize(measurement)  # OpenDP's serialize is untyped
    return text


def opendp_query(measurement_json: str) -> query_pb2.Query:
    return query_pb2.Query(opendp=query_pb2.OpenDpQuery(measurement_json=measurement_json))


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    server = Executor(LOMAS_FREE_CALL_WORKERS="1", LOMAS_FREE_CALL_SPARES="0")
    try:
        yield server
    finally:
        server.stop()


def test_an_enormous_resize_is_refused_quickly_in_cost_and_dummy_paths(
    executor: Executor, penguin_md: DatasetMetadata
) -> None:
    query = opendp_query(resize(list(penguin_md.column_names), 10**12))
    calls: dict[str, Callable[[], object]] = {
        "cost": lambda: executor.stub.EstimateCost(
            executor_pb2.EstimateCostRequest(dataset=dataset(), query=query), timeout=30
        ),
        "dummy": lambda: executor.stub.RunDummyQuery(
            executor_pb2.RunDummyQueryRequest(
                dataset=dataset(), query=query, row_count=100, seed=1
            ),
            timeout=30,
        ),
    }
    pids = executor.pool.pids()
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert time.monotonic() - started < 5, name
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        info = error_info(caught.value)
        assert info.reason == "QUERY_LIMIT_EXCEEDED", name
        assert info.metadata["limit"] == "maxRows"
        assert info.metadata["argument"] == "make_resize.size"
        assert info.metadata["maximum"] == str(2 * penguin_md.rows)
    assert executor.pool.pids() == pids  # refused, not crashed: the same child
    assert executor.pool.counters.killed == 0
    # The service is up and a sensible resize runs.
    sensible = opendp_query(resize(list(penguin_md.column_names), 400))
    reply = executor.stub.RunDummyQuery(
        executor_pb2.RunDummyQueryRequest(dataset=dataset(), query=sensible, row_count=500, seed=1),
        timeout=30,
    )
    assert reply.arrow_ipc and reply.cost.pure_dp.epsilon


def test_dummy_frames_beyond_the_cell_ceiling_are_refused(executor: Executor) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        executor.stub.GetDummyDataset(
            executor_pb2.GetDummyDatasetRequest(dataset=dataset(), row_count=800_000, seed=1),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["limit"]) == ("QUERY_LIMIT_EXCEEDED", "maxDummyCells")
    assert info.metadata["maximum"] == "5000000"
    reply = executor.stub.GetDummyDataset(
        executor_pb2.GetDummyDatasetRequest(dataset=dataset(), row_count=50_000, seed=1),
        timeout=60,
    )
    assert len(reply.arrow_ipc) > 1_000_000


def test_the_real_run_refuses_before_loading_data(
    tmp_path: Path, penguin_md: DatasetMetadata
) -> None:
    cache = DatasetCache(max_bytes=64 * 1024**2)
    engine = QueryEngine(cache)
    missing = DatasetRef(
        "PENGUIN", 1, DataSource.local(tmp_path / "absent.csv"), DataFormat.CSV, penguin_md
    )
    query = OpenDpMeasurementQuery(resize(list(penguin_md.column_names), 10**12))
    with pytest.raises(opendp_model.QueryLimitExceeded) as caught:
        engine.run(query, missing)
    assert caught.value.reason == "QUERY_LIMIT_EXCEEDED"
    assert cache.stats().misses == 0  # nothing was loaded


def test_ceilings_follow_the_settings(penguin_md: DatasetMetadata) -> None:
    columns = list(penguin_md.column_names)
    # rows x factor, or the maximum when it is smaller
    assert oq.estimate_cost(OpenDpMeasurementQuery(resize(columns, 688)), penguin_md)
    with pytest.raises(opendp_model.QueryLimitExceeded):
        oq.estimate_cost(OpenDpMeasurementQuery(resize(columns, 689)), penguin_md)
    tight = QueryLimits(opendp_max_rows=100)
    with pytest.raises(opendp_model.QueryLimitExceeded) as caught:
        oq.estimate_cost(OpenDpMeasurementQuery(resize(columns, 101)), penguin_md, tight)
    assert caught.value.metadata["maximum"] == "100"
    wide = QueryLimits(opendp_rows_factor=10)
    assert oq.estimate_cost(OpenDpMeasurementQuery(resize(columns, 3440)), penguin_md, wide)
    # dummy cells: rows x columns
    engine = QueryEngine(DatasetCache(max_bytes=0), limits=QueryLimits(max_dummy_cells=70))
    ref = DatasetRef("PENGUIN", 1, DataSource.local("/nowhere.csv"), DataFormat.CSV, penguin_md)
    assert len(engine.dummy_frame(ref, 10, 0)) == 10
    with pytest.raises(InvalidArgument) as refused:
        engine.dummy_frame(ref, 11, 0)
    assert refused.value.reason == "QUERY_LIMIT_EXCEEDED"
    assert refused.value.metadata == {"limit": "maxDummyCells", "maximum": "70"}


def test_sql_ceilings_come_from_the_environment(penguin_md: DatasetMetadata) -> None:
    limits = QueryLimits.from_env({"LOMAS_SQL_MAX_PARENTHESIS_DEPTH": "3"})
    engine = QueryEngine(DatasetCache(max_bytes=0), limits=limits)
    ref = DatasetRef("PENGUIN", 1, DataSource.local("/nowhere.csv"), DataFormat.CSV, penguin_md)

    def nested(depth: int) -> SmartnoiseSqlQuery:
        condition = "(" * depth + "bill_length_mm > 40" + ")" * depth
        return SmartnoiseSqlQuery(
            f"SELECT COUNT(*) AS n FROM df WHERE {condition}", Decimal(1), Decimal(0)
        )

    assert engine.estimate_cost(nested(3), ref)
    with pytest.raises(InvalidArgument) as refused:
        engine.estimate_cost(nested(4), ref)
    assert refused.value.reason == "QUERY_LIMIT_EXCEEDED"
    assert refused.value.metadata == {"limit": "maxParenthesisDepth", "maximum": "3"}


def _node(name: str, module: str, **kwargs: object) -> dict[str, object]:
    return {"__function__": name, "__module__": module, "__kwargs__": kwargs}


def _vector(size: object = None) -> dict[str, object]:
    atom = _node("atom_domain", "domains", T="f64", nan=False)
    return _node("vector_domain", "domains", atom_domain=atom, size=size)


@pytest.mark.parametrize(
    ("node", "argument", "limit"),
    [
        (
            _node("make_sized_bounded_float_checked_sum", "transformations", size=10**9),
            "size",
            "maxRows",
        ),
        (
            _node("make_bounded_float_checked_sum", "transformations", size_limit=10**9),
            "size_limit",
            "maxRows",
        ),
        (_vector(10**12), "size", "maxRows"),
        (
            _node("make_b_ary_tree", "transformations", leaf_count=10**12, branching_factor=2),
            "leaf_count",
            "maxElements",
        ),
        (
            _node("make_b_ary_tree", "transformations", leaf_count=8, branching_factor=10**12),
            "branching_factor",
            "maxElements",
        ),
        (
            _node("make_consistent_b_ary_tree", "transformations", branching_factor=10**9),
            "branching_factor",
            "maxElements",
        ),
        (
            _node("make_count_by_categories", "transformations", categories=list(range(100_001))),
            "categories",
            "maxElements",
        ),
        (
            _node("make_find_bin", "transformations", edges={"__tuple__": list(range(100_001))}),
            "edges",
            "maxElements",
        ),
        (
            _node(
                "make_quantiles_from_counts",
                "transformations",
                bin_edges=list(range(100_001)),
                alphas=[0.5],
            ),
            "bin_edges",
            "maxElements",
        ),
        (_node("make_noisy_top_k", "measurements", k=10**12), "k", "maxElements"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_every_size_argument_is_checked_before_deserializing(
    node: dict[str, object],
    argument: str,
    limit: str,
    penguin_md: DatasetMetadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*_: object) -> None:
        raise AssertionError("deserialize must not run")

    monkeypatch.setattr(dp, "deserialize", never)
    # Nested anywhere in an otherwise plausible pipeline.
    pipeline = _node(
        "make_chain_mt",
        "combinators",
        measurement1=_node("make_laplace", "measurements", scale=1.0),
        transformation0=node,
    )
    with pytest.raises(opendp_model.QueryLimitExceeded) as caught:
        oq.estimate_cost(OpenDpMeasurementQuery(json.dumps(pipeline)), penguin_md)
    assert caught.value.reason == "QUERY_LIMIT_EXCEEDED"
    assert caught.value.metadata["limit"] == limit
    assert caught.value.metadata["argument"].endswith(f".{argument}")


@pytest.mark.parametrize("size", ["1000000000000", 1e12, True, {"__tuple__": [1]}])
def test_sizes_must_be_plain_integers(size: object, penguin_md: DatasetMetadata) -> None:
    pipeline = _node("make_resize", "transformations", size=size, constant=40.0)
    with pytest.raises(InvalidQuery, match="must be an integer"):
        oq.estimate_cost(OpenDpMeasurementQuery(json.dumps(pipeline)), penguin_md)
