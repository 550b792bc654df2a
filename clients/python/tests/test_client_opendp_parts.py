"""The client sends an OpenDP measurement in the parts form: OpenDP's JSON with each distinct
constructor once, which is OpenDP's own JSON once every reference is put back."""

from __future__ import annotations

import json
from typing import Any

import opendp.prelude as dp
import pytest
from opendp import mod as opendp_mod

from lomas.client import client as client_module
from lomas.client.client import OpenDpClient
from lomas.client.opendp_parts import NotInPartsForm, parts_json
from lomas_testing.opendp_pipelines import mean_bill

dp.enable_features("contrib")  # what a researcher does to build OpenDP measurements

COLUMNS = ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm"]


def expanded(text: str) -> Any:
    """The parts form with every reference put back."""
    parts = json.loads(text)["__parts__"]
    done: list[Any] = []

    def put_back(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__part__"}:
                return done[value["__part__"]]
            return {name: put_back(item) for name, item in value.items()}
        if isinstance(value, list):
            return [put_back(item) for item in value]
        return value

    for part in parts:
        done.append(put_back(part))
    return done[-1]


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_a_measurement_is_sent_in_the_parts_form(noise: str) -> None:
    measurement = mean_bill(COLUMNS, noise)
    query = OpenDpClient._query(measurement, {})
    text = query.opendp.measurement_json
    assert text.startswith('{"__parts__":[')
    assert len(text) < 10_000
    assert expanded(text) == json.loads(dp.serialize(measurement))


def test_equal_parts_are_sent_once_and_the_text_depends_only_on_the_measurement() -> None:
    version = str(opendp_mod.__version__)
    # Two equal domains built apart are one part; two builds of one pipeline are one text.
    twice = dp.c.make_basic_composition(
        [dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), 1.0)]
        * 2
    )
    text = parts_json(twice, version)
    functions = [part["__function__"] for part in json.loads(text)["__parts__"]]
    assert functions.count("make_laplace") == 1
    assert parts_json(mean_bill(COLUMNS), version) == parts_json(mean_bill(COLUMNS), version)
    assert parts_json(mean_bill(COLUMNS), version) != parts_json(
        mean_bill(COLUMNS, impute=40.5), version
    )


def test_what_the_parts_form_cannot_hold_goes_in_opendps_own_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot(measurement: object, version: str) -> str:
        raise NotInPartsForm("test")

    monkeypatch.setattr(client_module, "parts_json", cannot)
    measurement = mean_bill(COLUMNS)
    query = OpenDpClient._query(measurement, {})
    assert query.opendp.measurement_json == dp.serialize(measurement)


def test_a_transformation_is_not_a_pipeline() -> None:
    with pytest.raises(TypeError, match="must be a Measurement"):
        OpenDpClient._query(
            dp.t.make_count(dp.vector_domain(dp.atom_domain(T=int)), dp.symmetric_distance()), {}
        )
