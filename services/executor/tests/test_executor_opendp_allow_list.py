"""The allow-list of OpenDP constructors: what it holds needs no feature beyond contrib, and hostile
measurement JSON is refused by name before anything is deserialized.

Hostile pipelines are built the way an attacker would send them: as JSON text, not through OpenDP's
Python API (which would refuse to serialize some of them).
"""

from __future__ import annotations

import inspect
import json

import opendp.prelude as dp
import pytest

from lomas_common.errors import InvalidQuery
from lomas_executor import opendp_allow_list, opendp_model
from lomas_executor import opendp_queries as oq
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery


def refused(error: pytest.ExceptionInfo[InvalidQuery], reason: str, text: str) -> None:
    assert error.value.reason == reason, error.value
    assert text in error.value.message, error.value.message


def test_allow_listed_constructors_exist_and_need_no_feature_beyond_contrib() -> None:
    for module_name, functions in opendp_allow_list.ALLOWED_CONSTRUCTORS.items():
        module = __import__(f"opendp.{module_name}", fromlist=["_"])
        for name in functions:
            function = getattr(module, name)
            source = inspect.getsource(function)
            for line in source.splitlines():
                if "assert_features(" in line:
                    assert line.strip() == 'assert_features("contrib")', (module_name, name)
    # and everything that asks for honest-but-curious is refused by name
    for module_name in ("combinators", "measurements", "transformations", "domains", "core"):
        module = __import__(f"opendp.{module_name}", fromlist=["_"])
        for name, function in vars(module).items():
            if inspect.isfunction(function) and "honest-but-curious" in inspect.getsource(function):
                assert (
                    name in opendp_allow_list.USER_CODE_CONSTRUCTORS
                    or name in opendp_allow_list.FEATURE_GATED_CONSTRUCTORS
                ), name


def _node(name: str, module: str, **kwargs: object) -> dict[str, object]:
    return {"__function__": name, "__module__": module, "__kwargs__": kwargs}


def _hostile(pipeline: dict[str, object]) -> OpenDpMeasurementQuery:
    return OpenDpMeasurementQuery(json.dumps(pipeline))


@pytest.mark.parametrize(
    ("pipeline", "text"),
    [
        (_node("enable_features", "mod", features=["honest-but-curious"]), "enable_features"),
        (_node("system", "os", command="true"), "os.system is not on the executor's allow-list"),
        (_node("make_sequential_composition", "combinators"), "not on the executor's allow-list"),
        (_node("make_private_lazyframe", "measurements"), "not on the executor's allow-list"),
        (_node("measurement_invoke", "core"), "not on the executor's allow-list"),
        (_node("make_user_transformation", "transformations"), "user-defined function"),
        (_node("new_function", "core", function="print"), "user-defined function"),
        (_node("make_population_amplification", "combinators"), "honest-but-curious"),
        (_node("make_identity", "transformations"), "honest-but-curious"),
        (
            _node(
                "make_chain_mt",
                "combinators",
                measurement1=_node("make_laplace", "measurements", scale=1.0),
                transformation0=_node("make_user_transformation", "transformations"),
            ),
            "user-defined function",
        ),
        (
            _node("make_laplace", "measurements", input_domain={"__lazyframe__": "AAAA"}),
            "Polars objects are not accepted",
        ),
        ({**_node("make_laplace", "measurements"), "__class__": "x"}, "unknown field"),
        (
            {"__function__": "make_laplace", "__module__": "measurements", "__pickle__": 1},
            "unknown",
        ),
    ],
)
def test_hostile_measurements_are_refused_before_deserializing(
    pipeline: dict[str, object],
    text: str,
    penguin_md: DatasetMetadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*_: object) -> None:
        raise AssertionError("deserialize must not run")

    monkeypatch.setattr(dp, "deserialize", never)
    with pytest.raises(InvalidQuery) as error:
        oq.estimate_cost(_hostile(pipeline), penguin_md)
    refused(error, opendp_model.PIPELINE_REFUSED, text)
