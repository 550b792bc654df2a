"""OpenDP measurements in both JSON forms through the platform: the client's parts form (each
distinct constructor once) and OpenDP's own form (`dp.serialize`, still accepted) cost and run
alike, and a hostile part is refused before any charge."""

from __future__ import annotations

import json
import math
import uuid
from decimal import Decimal

import opendp.prelude as dp
import pytest
from mesh_testing import RunningMesh

from lomas.client import Client, LomasError
from lomas.client.admin import approx_dp
from lomas.common.v1 import query_pb2
from lomas_embedded import demo
from lomas_testing.opendp_pipelines import mean_bill

dp.enable_features("contrib")  # building the test's OpenDP pipelines


def researcher(platform: RunningMesh) -> Client:
    name = f"parts-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("10", "0.001"))
    return platform.client(name)


def opendp_form(measurement: dp.Measurement) -> query_pb2.Query:
    return query_pb2.Query(opendp=query_pb2.OpenDpQuery(measurement_json=dp.serialize(measurement)))


def test_both_forms_cost_and_run_alike(platform: RunningMesh) -> None:
    client = researcher(platform)
    columns = list(client.get_dataset_metadata()["columns"])
    measurement = mean_bill(columns, impute=41.25)
    assert client.opendp.cost(measurement) == client._estimate(opendp_form(measurement))
    parts = client.opendp.query(measurement)
    plain = client._execute(opendp_form(mean_bill(columns, impute=41.5)), {})
    assert parts.shape == plain.shape == (1, 1)
    assert math.isfinite(float(parts["value"][0])) and math.isfinite(float(plain["value"][0]))
    spent = client.get_total_spent_budget()
    assert spent["total_spent_epsilon"] == 2 * client.opendp.cost(measurement)["epsilon"]


def test_a_hostile_part_is_refused_before_any_charge(platform: RunningMesh) -> None:
    client = researcher(platform)
    columns = list(client.get_dataset_metadata()["columns"])
    parts = json.loads(client.opendp._query(mean_bill(columns), {}).opendp.measurement_json)
    # The first part (make_split_dataframe) swapped for a constructor that runs user code.
    parts["__parts__"][0] = {
        "__function__": "make_user_transformation",
        "__module__": "transformations",
        "__kwargs__": {},
    }
    query = query_pb2.Query(opendp=query_pb2.OpenDpQuery(measurement_json=json.dumps(parts)))
    for call in (lambda: client._estimate(query), lambda: client._execute(query, {})):
        with pytest.raises(LomasError) as refused:
            call()
        assert (refused.value.code, refused.value.reason) == (
            "INVALID_ARGUMENT",
            "OPENDP_PIPELINE_REFUSED",
        )
    assert client.get_total_spent_budget()["total_spent_epsilon"] == Decimal(0)


def test_one_measurement_in_either_form_is_one_query(platform: RunningMesh) -> None:
    """The fingerprint is taken over the canonical parts form, whichever form was sent: the same
    measurement sent again in OpenDP's own form is a free replay of its parts-form release."""
    client = researcher(platform)
    columns = list(client.get_dataset_metadata()["columns"])
    measurement = mean_bill(columns, impute=42.75)
    first = client.opendp.query(measurement)
    spent = client.get_total_spent_budget()
    again = client._execute(opendp_form(measurement), {})
    assert again.attrs["replay"] and again.attrs["query_id"] == first.attrs["query_id"]
    assert client.get_total_spent_budget() == spent
