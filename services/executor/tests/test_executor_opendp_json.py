"""OpenDP JSON deserialized with shared parts gives OpenDP's own measurement, faster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import opendp.prelude as dp
import pytest
from opendp import mod as opendp_mod

from lomas_executor import opendp_model  # noqa: F401  (enables the OpenDP features the executor uses)
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_json import deserialize_shared
from lomas_testing.opendp_pipelines import mean_bill


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_the_shared_measurement_is_opendps_own(noise: str, penguin_md: DatasetMetadata) -> None:
    text = dp.serialize(mean_bill(list(penguin_md.column_names), noise))
    stock = dp.deserialize(text)
    shared = deserialize_shared(text)
    assert dp.serialize(shared) == text  # the same tree, part for part
    assert shared.map(1) == stock.map(1)
    assert str(shared.input_domain) == str(stock.input_domain)
    assert str(shared.output_measure) == str(stock.output_measure)


def test_repeated_parts_are_built_once(
    penguin_md: DatasetMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = dp.serialize(mean_bill(list(penguin_md.column_names)))
    objects = text.count("{")
    built: list[object] = []
    hook: Callable[[dict[str, Any]], Any] = opendp_mod._deserialization_hook

    def counted(node: dict[str, Any]) -> Any:
        built.append(node)
        return hook(node)

    monkeypatch.setattr(opendp_mod, "_deserialization_hook", counted)
    deserialize_shared(text)
    assert objects > 1000  # OpenDP repeats the chain at every step
    assert len(built) < 100  # each distinct part built once


def test_plain_json_values_come_back_as_they_are() -> None:
    assert deserialize_shared('{"a": [1, 2.0, "x", null, true], "b": {"c": 1}}') == {
        "a": [1, 2.0, "x", None, True],
        "b": {"c": 1},
    }
