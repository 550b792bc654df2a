"""Accuracy before spending, through the public API: free, data-free, per output column, the
engines' own numbers (services/executor/tests/test_executor_accuracy.py checks those against the
spread of real releases)."""

from __future__ import annotations

from decimal import Decimal

import opendp.prelude as dp
import pytest
from mesh_testing import RunningMesh

from lomas.client import AccessDenied, InvalidArgument
from lomas_embedded import demo
from lomas_testing.opendp_pipelines import mean_bill

SQL = "SELECT COUNT(*) AS n, AVG(bill_length_mm) AS a FROM df"
dp.enable_features("contrib")  # building the test's OpenDP pipelines


def test_accuracy_is_free_and_per_column(platform: RunningMesh) -> None:
    client = platform.client()
    before = client.get_remaining_budget()
    at_95 = client.smartnoise_sql.accuracy(SQL, epsilon="0.5", delta="0.00001")
    at_99 = client.smartnoise_sql.accuracy(SQL, epsilon="0.5", delta="0.00001", alpha="0.01")
    assert list(at_95) == ["n", "a"]
    assert at_95["a"] is None  # an average has no closed form; none is claimed
    assert at_95["n"] is not None and at_99["n"] is not None
    assert Decimal(0) < at_95["n"] < at_99["n"]
    # A smaller epsilon means more noise.
    noisier = client.smartnoise_sql.accuracy(SQL, epsilon="0.1", delta="0.00001")["n"]
    assert noisier is not None and noisier > at_95["n"]

    columns = list(client.get_dataset_metadata()["columns"])
    (value,) = client.opendp.accuracy(mean_bill(columns)).items()
    assert value[0] == "value" and value[1] is not None and value[1] > 0
    assert client.get_remaining_budget() == before


def test_accuracy_refusals(platform: RunningMesh) -> None:
    client = platform.client()
    with pytest.raises(InvalidArgument):
        client.smartnoise_sql.accuracy(SQL, epsilon="0.5", delta="0.00001", alpha="1")
    with pytest.raises(Exception) as invalid:
        client.smartnoise_sql.accuracy("SELECT nothing FROM df", epsilon="0.5", delta="0.00001")
    assert getattr(invalid.value, "reason", "") == "QUERY_INVALID"
    stranger = platform.client("accuracy-stranger", demo.DATASET)
    with pytest.raises(AccessDenied):
        stranger.smartnoise_sql.accuracy(SQL, epsilon="0.5", delta="0.00001")


def test_measurement_accuracy_matches_opendp(platform: RunningMesh) -> None:
    client = platform.client()
    columns = list(client.get_dataset_metadata()["columns"])
    announced = client.opendp.accuracy(mean_bill(columns, noise="laplace"), alpha="0.05")
    # mean_bill adds Laplace noise of scale 0.5 to a float mean.
    expected = dp.laplacian_scale_to_accuracy(0.5, 0.05)
    assert announced["value"] == Decimal(repr(expected))
