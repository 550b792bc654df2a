"""The parts form of an OpenDP measurement (each distinct constructor sent once): the Python client
writes it, the executor checks every part against the allow-list and the ceilings before building
anything, builds OpenDP's own measurement from it, and gives it one canonical text with OpenDP's
own form of the same measurement.

Hostile parts are written as JSON text, as an attacker would send them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import opendp.prelude as dp
import pytest
from opendp import mod as opendp_mod

from lomas.client.opendp_parts import NotInPartsForm, parts_json
from lomas_common.errors import InvalidQuery
from lomas_executor import opendp_model
from lomas_executor.accuracy import opendp_accuracy
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_allow_list import measurement_from_json
from lomas_executor.opendp_json import canonical_measurement_json
from lomas_executor.opendp_model import OpenDpMeasurementQuery
from lomas_executor.opendp_queries import estimate_cost
from lomas_executor.settings import QueryLimits
from lomas_testing.opendp_pipelines import mean_bill

VERSION = str(opendp_mod.__version__)


def parts_of(measurement: dp.Measurement) -> str:
    return parts_json(measurement, VERSION)


def node(function: str, module: str, **kwargs: object) -> dict[str, object]:
    return {"__function__": function, "__module__": module, "__kwargs__": kwargs}


def ref(index: int) -> dict[str, int]:
    return {"__part__": index}


def sent(*parts: object) -> str:
    return json.dumps({"__parts__": list(parts)})


def refused(text: str, metadata: DatasetMetadata, reason: str, message: str) -> None:
    with pytest.raises(InvalidQuery) as error:
        measurement_from_json(text, metadata, QueryLimits())
    assert error.value.reason == reason, error.value
    assert message in error.value.message, error.value.message


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The constructors deserializing called (none, for a refused pipeline)."""
    calls: list[str] = []
    hook: Callable[[dict[str, Any]], Any] = opendp_mod._deserialization_hook

    def counted(found: dict[str, Any]) -> Any:
        calls.append(str(found.get("__function__", "")))
        return hook(found)

    monkeypatch.setattr(opendp_mod, "_deserialization_hook", counted)
    return calls


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_the_parts_form_is_opendps_measurement_in_a_few_kilobytes(
    noise: str, penguin_md: DatasetMetadata
) -> None:
    measurement = mean_bill(list(penguin_md.column_names), noise)
    text = parts_of(measurement)
    assert len(text) < 10_000 < 500_000 < len(dp.serialize(measurement))
    rebuilt = measurement_from_json(text, penguin_md, QueryLimits())
    assert dp.serialize(rebuilt) == dp.serialize(measurement)  # the same tree, part for part
    assert rebuilt.map(1) == measurement.map(1)
    query = OpenDpMeasurementQuery(text)
    plain = OpenDpMeasurementQuery(dp.serialize(measurement))
    assert estimate_cost(query, penguin_md) == estimate_cost(plain, penguin_md)
    limits = QueryLimits()
    assert opendp_accuracy(query, penguin_md, limits, 0.05) == opendp_accuracy(
        plain, penguin_md, limits, 0.05
    )
    assert opendp_accuracy(query, penguin_md, limits, 0.05)[0].half_width is not None


def test_each_part_is_built_once(penguin_md: DatasetMetadata, built: list[str]) -> None:
    text = parts_of(mean_bill(list(penguin_md.column_names), impute=41.5))
    measurement_from_json(text, penguin_md, QueryLimits())
    constructors = [name for name in built if name]
    assert len(constructors) == len(json.loads(text)["__parts__"]) < 40


def test_both_forms_have_one_canonical_text(penguin_md: DatasetMetadata) -> None:
    measurement = mean_bill(list(penguin_md.column_names))
    text = parts_of(measurement)
    assert canonical_measurement_json(dp.serialize(measurement)) == text
    assert canonical_measurement_json(text) == text
    # the same parts in another order, spaced and with keys in another order: the same text
    parts = json.loads(text)["__parts__"]
    split, select = parts[0], parts[1]
    assert split["__function__"] == "make_split_dataframe"
    assert select["__function__"] == "make_select_column"
    renumbered = _swap_first_two([select, split, *parts[2:]])
    spelled = json.dumps({"__parts__": [dict(reversed(p.items())) for p in renumbered]}, indent=1)
    assert canonical_measurement_json(spelled) == text
    # another measurement: another text
    other = mean_bill(list(penguin_md.column_names), impute=40.001)
    assert parts_of(other) != text
    assert canonical_measurement_json(dp.serialize(other)) == parts_of(other)


def _swap_first_two(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`parts` with its references to parts 0 and 1 exchanged (after exchanging those parts)."""

    def renumbered(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__part__"} and value["__part__"] in (0, 1):
                return {"__part__": 1 - value["__part__"]}
            return {name: renumbered(item) for name, item in value.items()}
        if isinstance(value, list):
            return [renumbered(item) for item in value]
        return value

    return [renumbered(part) for part in parts]


def test_a_text_that_is_not_a_valid_measurement_is_canonical_as_other_json() -> None:
    assert canonical_measurement_json("not json") == "not json"
    assert canonical_measurement_json('{"b": [1, 2], "a": 1}') == '{"a":1,"b":[1,2]}'
    for text in (
        sent(ref(0)),
        sent(node("f", "m", x=ref(0))),
        json.dumps(node("f", "m", x=ref(0))),
    ):
        assert canonical_measurement_json(text) == json.dumps(
            json.loads(text), sort_keys=True, separators=(",", ":")
        )


def _csv_steps(metadata: DatasetMetadata) -> list[dict[str, object]]:
    """A small valid chain as parts: split, select, chain."""
    return [
        node(
            "make_split_dataframe",
            "transformations",
            separator=",",
            col_names=list(metadata.column_names),
            K="String",
        ),
        node("make_select_column", "transformations", key="sex", K="String", TOA="String"),
        node("make_chain_tt", "combinators", transformation1=ref(1), transformation0=ref(0)),
    ]


@pytest.mark.parametrize(
    ("hostile", "reason", "message"),
    [
        (
            lambda steps: [*steps, node("make_user_transformation", "transformations", x=ref(2))],
            opendp_model.PIPELINE_REFUSED,
            "make_user_transformation takes a user-defined function",
        ),
        (
            lambda steps: [*steps, node("system", "os", command="true", after=ref(2))],
            opendp_model.PIPELINE_REFUSED,
            "os.system is not on the executor's allow-list",
        ),
        (
            lambda steps: [
                *steps,
                node("make_resize", "transformations", size=10**12, input=ref(2)),
            ],
            opendp_model.QUERY_LIMIT_EXCEEDED,
            "make_resize size is 1000000000000",
        ),
        (
            lambda steps: [
                node(
                    "make_split_dataframe",
                    "transformations",
                    separator=",",
                    col_names=["a"],
                    K="String",
                ),
                *steps[1:],
            ],
            opendp_model.INPUT_DOMAIN_MISMATCH,
            "make_split_dataframe must name the dataset's columns",
        ),
        (
            lambda steps: [*steps, {"__expr__": "AAAA", "x": ref(2)}],
            "QUERY_INVALID",
            "part 3 of the OpenDP measurement is not an OpenDP constructor",
        ),
        (
            lambda steps: [*steps[:2], node("make_chain_tt", "combinators", t=ref(2))],
            "QUERY_INVALID",
            "part 2 of the OpenDP measurement refers to a later part",
        ),
        (
            lambda steps: [*steps[:2], node("make_chain_tt", "combinators", t=ref(7))],
            "QUERY_INVALID",
            "refers to a later part",
        ),
        (
            lambda steps: [*steps[:2], node("make_chain_tt", "combinators", t={"__part__": -1})],
            "QUERY_INVALID",
            "refers to a later part",
        ),
        (
            lambda steps: [*steps[:2], node("make_chain_tt", "combinators", t={"__part__": True})],
            "QUERY_INVALID",
            "a part reference must be",
        ),
        (
            lambda steps: [
                *steps[:2],
                node("make_chain_tt", "combinators", t={"__part__": 0, "__function__": "x"}),
            ],
            "QUERY_INVALID",
            "a part reference must be",
        ),
        (
            lambda steps: [*steps[:2], node("make_count", "transformations"), steps[2]],
            "QUERY_INVALID",
            "part 2 of the OpenDP measurement is not used",
        ),
        (
            lambda steps: [node("make_count", "transformations", pl={"__lazyframe__": "AAAA"})],
            opendp_model.PIPELINE_REFUSED,
            "Polars objects are not accepted",
        ),
    ],
)
def test_every_part_is_checked_before_anything_is_built(
    hostile: Callable[[list[dict[str, object]]], list[object]],
    reason: str,
    message: str,
    penguin_md: DatasetMetadata,
    built: list[str],
) -> None:
    refused(sent(*hostile(_csv_steps(penguin_md))), penguin_md, reason, message)
    assert built == []


def test_the_envelope_holds_only_a_list_of_parts(
    penguin_md: DatasetMetadata, built: list[str]
) -> None:
    steps = _csv_steps(penguin_md)
    for text in (
        json.dumps({"__parts__": steps, "extra": 1}),
        json.dumps({"__parts__": []}),
        json.dumps({"__parts__": {"0": steps[0]}}),
    ):
        refused(text, penguin_md, "QUERY_INVALID", "parts form must be")
    assert built == []


def test_a_reference_in_opendps_own_form_is_refused(
    penguin_md: DatasetMetadata, built: list[str]
) -> None:
    text = json.dumps(node("make_chain_tt", "combinators", transformation1=ref(0)))
    refused(text, penguin_md, opendp_model.PIPELINE_REFUSED, "unknown OpenDP JSON field '__part__'")
    assert built == []


def test_a_measurement_too_large_once_expanded_is_refused(
    penguin_md: DatasetMetadata, built: list[str]
) -> None:
    # 40 parts, each using the one before twice: a few kB that stand for 2**40 nodes.
    parts: list[object] = [node("make_count", "transformations")]
    for index in range(40):
        parts.append(
            node("make_basic_composition", "combinators", measurements=[ref(index), ref(index)])
        )
    text = sent(*parts)
    assert len(text) < 10_000
    refused(
        text, penguin_md, "QUERY_INVALID", f"more than {opendp_model.MAX_JSON_NODES} JSON nodes"
    )
    assert built == []


def test_what_the_parts_form_cannot_hold_is_named() -> None:
    with pytest.raises(NotInPartsForm):
        parts_json(object(), VERSION)
    with pytest.raises(NotInPartsForm):
        parts_json(_Described({"x": object()}), VERSION)
    with pytest.raises(NotInPartsForm):
        parts_json(_Described({"x": {1: "key that is not a string"}}), VERSION)


class _Described:
    """A stand-in for an OpenDP object: the constructor call OpenDP records on what it builds."""

    def __init__(self, kwargs: dict[str, object]) -> None:
        self.__opendp_dict__ = {
            "__function__": "make_count",
            "__module__": "transformations",
            "__kwargs__": kwargs,
        }


def test_the_node_ceiling_counts_the_measurement_as_opendp_writes_it(
    penguin_md: DatasetMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    measurement = mean_bill(list(penguin_md.column_names), impute=42.25)
    nodes = sum(1 for _ in opendp_model.walk(json.loads(dp.serialize(measurement))))
    text = parts_of(measurement)
    monkeypatch.setattr(opendp_model, "MAX_JSON_NODES", nodes)
    measurement_from_json(text, penguin_md, QueryLimits())
    measurement_from_json.cache_clear()
    monkeypatch.setattr(opendp_model, "MAX_JSON_NODES", nodes - 1)
    refused(text, penguin_md, "QUERY_INVALID", f"more than {nodes - 1} JSON nodes")


def test_a_part_is_never_taken_for_a_number() -> None:
    # g(x=<part 0>) and g(x=0) in one measurement are two parts, whatever the part's number.
    count = node("make_count", "transformations")
    text = sent(
        count, node("g", "m", x=ref(0)), node("g", "m", x=0), node("h", "m", a=ref(1), b=ref(2))
    )
    canonical = json.loads(canonical_measurement_json(text))["__parts__"]
    assert [part["__kwargs__"] for part in canonical] == [
        {},
        {"x": {"__part__": 0}},
        {"x": 0},
        {"a": {"__part__": 1}, "b": {"__part__": 2}},
    ]
    plain = node("h", "m", a=node("g", "m", x=count), b=node("g", "m", x=0))
    assert canonical_measurement_json(json.dumps(plain)) == canonical_measurement_json(text)


def test_a_dictionary_that_would_read_as_a_reference_is_not_in_parts_form() -> None:
    with pytest.raises(NotInPartsForm):
        parts_json(_Described({"x": {"__part__": 0}}), VERSION)
