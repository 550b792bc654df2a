"""SmartNoise-Synth queries: validation and cost on the metadata alone (no data, no JAX)."""

from __future__ import annotations

import importlib.util
import json
from decimal import Decimal
from typing import Any

import pytest

from lomas.common.v1 import query_pb2
from lomas_common.errors import FailedPrecondition, InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import convert
from lomas_executor import smartnoise_synth as ss
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits, SynthLimits
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery

GAN_ON = SynthLimits(gan="on")


def _plan(md: DatasetMetadata, limits: SynthLimits = GAN_ON, **fields: Any) -> ss.SynthPlan:
    fields.setdefault("synth_name", "mst")
    fields.setdefault("epsilon", Decimal("1"))
    return ss.plan(SmartnoiseSynthQuery(**fields), md, limits, SqlLimits())


def _refused(md: DatasetMetadata, reason: str = "QUERY_INVALID", **fields: Any) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as caught:
        _plan(md, **fields)
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def _big(md: DatasetMetadata, rows: int = 100_000, **changes: Any) -> DatasetMetadata:
    data = md.to_dict() | {"rows": rows} | changes
    return DatasetMetadata.from_dict(data)


def test_unknown_and_unoffered_synthesizers_are_refused_by_name(
    penguin_md: DatasetMetadata,
) -> None:
    error = _refused(penguin_md, "SYNTHESIZER_REFUSED", synth_name="i_do_not_exist")
    assert "i_do_not_exist" in error.message and error.metadata["synthesizer"] == "i_do_not_exist"
    assert "mst" in error.message  # the offered ones are listed
    error = _refused(penguin_md, "SYNTHESIZER_REFUSED", synth_name="pacsynth")
    assert "pacsynth" in error.message
    assert _plan(penguin_md, synth_name=" MST ").synth_name == "mst"


def test_return_model_is_refused(penguin_md: DatasetMetadata) -> None:
    for name in ("mst", "aim", "mwem"):
        error = _refused(penguin_md, synth_name=name, return_model=True)
        assert "model" in error.message and error.metadata == {"field": "return_model"}


def test_gan_without_the_heavy_pool_fails_its_precondition(
    penguin_md: DatasetMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _big(penguin_md)
    real = importlib.util.find_spec

    def without_torch(name: str, *args: Any) -> Any:
        return None if name in ("torch", "opacus") else real(name, *args)

    for limits in (SynthLimits(gan="off"), SynthLimits(gan="auto")):
        if limits.gan == "auto":
            monkeypatch.setattr(importlib.util, "find_spec", without_torch)
        with pytest.raises(FailedPrecondition) as caught:
            _plan(big, limits, synth_name="patectgan", delta=Decimal("1e-6"))
        assert caught.value.reason == "HEAVY_POOL_UNAVAILABLE"
        assert caught.value.metadata == {"pool": "heavy", "synthesizer": "patectgan"}
        assert "heavy" in caught.value.message
    assert not ss.gan_dependencies_available(SynthLimits(gan="auto"))
    assert ss.gan_dependencies_available(GAN_ON)


def test_gans_are_refused_on_small_datasets(penguin_md: DatasetMetadata) -> None:
    for name in ("patectgan", "pategan"):
        error = _refused(penguin_md, "SYNTHESIZER_REFUSED", synth_name=name, delta=Decimal("1e-6"))
        assert "344 rows" in error.message and error.metadata == {"synthesizer": name}
    small = _big(penguin_md, rows=1_200)
    _refused(
        small,
        "SYNTHESIZER_REFUSED",
        synth_name="patectgan",
        delta=Decimal("1e-6"),
        synth_params_json='{"batch_size": 2000}',
    )
    plan = _plan(small, synth_name="patectgan", delta=Decimal("1e-6"), select_cols=("species",))
    assert (plan.style, plan.delta) == ("gan", 1e-6)


def test_gans_whose_accountant_warns_its_budget_is_incorrect_are_refused(
    penguin_md: DatasetMetadata,
) -> None:
    for name in ("dpctgan", "dpgan"):
        error = _refused(
            _big(penguin_md), "SYNTHESIZER_REFUSED", synth_name=name, delta=Decimal("1e-6")
        )
        assert "Opacus" in error.message and error.metadata == {"synthesizer": name}


def test_delta_rules_per_synthesizer(penguin_md: DatasetMetadata) -> None:
    error = _refused(penguin_md, synth_name="mwem", delta=Decimal("1e-6"))
    assert "mwem spends no delta" in error.message
    mwem = _plan(penguin_md, synth_name="mwem", delta=Decimal(0), select_cols=("species", "island"))
    assert mwem.delta is None and mwem.cost == PrivacyLoss.approx_dp(Decimal(1), Decimal(0))
    # aim and mst take SmartNoise-Synth's default delta, and are charged it.
    for name in ("mst", "aim"):
        plan = _plan(penguin_md, synth_name=name)
        assert plan.cost == PrivacyLoss.approx_dp(Decimal(1), Decimal("1e-9"))
        _refused(penguin_md, "DELTA_REQUIRED", synth_name=name, delta=Decimal(0))
    _refused(_big(penguin_md), "DELTA_REQUIRED", synth_name="pategan")


def test_cost_is_exactly_the_query_s_epsilon_and_delta(penguin_md: DatasetMetadata) -> None:
    query = SmartnoiseSynthQuery(
        "mst", Decimal("0.123456789012345678"), Decimal("0.0000123"), select_cols=("species",)
    )
    cost = ss.estimate_cost(query, penguin_md, GAN_ON, SqlLimits())
    assert cost == PrivacyLoss.approx_dp(Decimal("0.123456789012345678"), Decimal("0.0000123"))
    plan = ss.plan(query, penguin_md, GAN_ON, SqlLimits())
    assert Decimal(plan.epsilon) <= query.epsilon and Decimal(plan.delta or 0) <= Decimal(
        "0.0000123"
    )
    with pytest.raises(InvalidQuery, match="greater than 0"):
        SmartnoiseSynthQuery("mst", Decimal(0))


def test_select_cols_must_be_public_metadata_columns(penguin_md: DatasetMetadata) -> None:
    error = _refused(penguin_md, select_cols=("species", "idonotexist"))
    assert error.metadata == {"column": "idonotexist"}
    _refused(penguin_md, select_cols=("species", "species"))
    plan = _plan(penguin_md, select_cols=("island", "species"))
    assert plan.column_names == ["island", "species"]
    assert _plan(penguin_md).column_names == list(penguin_md.column_names)
    species = plan.columns[1]
    assert species.kind == "categorical" and set(species.categories) == {
        "Adelie",
        "Chinstrap",
        "Gentoo",
    }
    data = penguin_md.to_dict()
    data["columns"] |= {
        "note": {"type": "string"},
        "weight": {"type": "float"},
        "id": {"type": "int", "private_id": True},
        "seen": {"type": "datetime"},
    }
    md = DatasetMetadata.from_dict(data)
    for column, words in (
        ("note", "categories"),
        ("weight", "bounds"),
        ("id", "identifier"),
        ("seen", "datetime"),
    ):
        error = _refused(md, select_cols=(column,))
        assert words in error.message and error.metadata == {"column": column}
    # Bounds given by a constraint make an unbounded column usable.
    constraint = {"weight": {"name": "BinTransformer", "params": {"lower": 0, "upper": 9}}}
    plan = _plan(md, select_cols=("weight",), constraints_json=json.dumps(constraint))
    assert (plan.columns[0].lower, plan.columns[0].upper) == (0.0, 9.0)


def test_identifier_columns_are_left_out_of_the_default_selection(
    penguin_md: DatasetMetadata,
) -> None:
    data = penguin_md.to_dict()
    data["columns"] |= {"id": {"type": "int", "private_id": True}}
    md = DatasetMetadata.from_dict(data)
    assert "id" not in _plan(md).column_names  # identifiers are left out of the default


def test_synth_params_are_allow_listed(penguin_md: DatasetMetadata) -> None:
    big = _big(penguin_md)
    plan = _plan(
        penguin_md,
        synth_name="aim",
        synth_params_json='{"rounds": 5, "degree": 2, "max_model_size": 10}',
    )
    assert plan.params == {"rounds": 5, "degree": 2, "max_model_size": 10.0}
    for params, words in (
        ('{"rounds": 5}', "mst takes no parameter 'rounds'"),
        ('{"verbose": true}', "verbose is not accepted"),
        ('{"epsilon": 3}', "epsilon is the query's own field"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ):
        error = _refused(penguin_md, synth_params_json=params)
        assert words in error.message, error.message
    for name, params, words in (
        ("aim", '{"rounds": 1e9}', "between"),
        ("aim", '{"rounds": "__import__(\'os\')"}', "must be a number"),
        ("aim", '{"degree": 2.5}', "integer"),
        ("mwem", '{"add_ranges": 1}', "true or false"),
        ("patectgan", '{"disabled_dp": true}', "cannot be turned off"),
        ("patectgan", '{"batch_size": 501}', "even"),
        ("patectgan", '{"generator_dim": [64, "x"]}', "number"),
        ("patectgan", '{"loss": "mine"}', "one of"),
    ):
        md = big if name in ss.GAN_SYNTHESIZERS else penguin_md
        error = _refused(md, synth_name=name, delta=Decimal("1e-7"), synth_params_json=params)
        assert words in error.message, error.message
    plan = _plan(
        big,
        synth_name="patectgan",
        delta=Decimal("1e-7"),
        synth_params_json='{"generator_dim": [64, 64], "epochs": 2}',
    )
    assert plan.params == {"generator_dim": (64, 64), "epochs": 2}


def test_constraints_are_allow_listed(penguin_md: DatasetMetadata) -> None:
    logger_form = {
        "module": "smartnoise-synth",
        "version": "1.0.8",
        "constraints": {
            "bill_length_mm": {
                "type": "_ssynth_type:BinTransformer",
                "name": "BinTransformer",
                "params": {
                    "lower": 30,
                    "upper": 65,
                    "epsilon": 0.0,
                    "bins": 20,
                    "nullable": True,
                    "odometer": None,
                },
            },
            "species": {
                "type": "_ssynth_type:LabelTransformer",
                "name": "LabelTransformer",
                "params": {"nullable": True},
            },
        },
    }
    plan = _plan(
        penguin_md,
        select_cols=("species", "bill_length_mm"),
        constraints_json=json.dumps(logger_form),
    )
    bill = plan.columns[1]
    assert (bill.bins, bill.lower, bill.upper) == (20, 30.0, 65.0)
    for constraint, words in (
        ({"species": {"name": "AnonymizationTransformer", "params": "email"}}, "not accepted"),
        ({"bill_length_mm": {"name": "LogTransformer", "params": {}}}, "not accepted"),
        ({"bill_length_mm": {"name": "BinTransformer", "params": {"lower": 1}}}, "both"),
        ({"bill_length_mm": {"name": "BinTransformer", "params": {"epsilon": 1.0}}}, "never from"),
        ({"bill_length_mm": {"name": "MinMaxTransformer", "params": {}}}, "BinTransformer here"),
        ({"island": "LabelTransformer"}, "not selected"),
        ({"species": {"name": "BinTransformer", "params": {"bins": 3}}}, "numeric columns only"),
    ):
        error = _refused(
            penguin_md,
            select_cols=("species", "bill_length_mm"),
            constraints_json=json.dumps(constraint),
        )
        assert words in error.message, error.message


def test_datasets_where_one_person_owns_several_rows_are_refused(
    penguin_md: DatasetMetadata,
) -> None:
    error = _refused(_big(penguin_md, rows=344, max_ids=3))
    assert "max_ids" in error.message


def test_mwem_is_refused_where_it_would_be_unreliable_or_too_large(
    penguin_md: DatasetMetadata,
) -> None:
    error = _refused(penguin_md, "QUERY_LIMIT_EXCEEDED", synth_name="mwem")
    assert "split_factor" in error.message and error.metadata["limit"] == "maxMwemCells"
    error = _refused(
        penguin_md,
        "SYNTHESIZER_REFUSED",
        synth_name="mwem",
        select_cols=("sex",),
        nullable=False,
        synth_params_json='{"iterations": 10}',
    )
    assert "privacy risk" in error.message
    plan = _plan(penguin_md, synth_name="mwem", select_cols=("species", "island"))
    # The defaults MWEM would derive from the data's row count come from the metadata's.
    assert plan.params == {"iterations": 30, "marginal_width": 2}


def test_nb_samples_is_capped(penguin_md: DatasetMetadata) -> None:
    assert _plan(penguin_md, select_cols=("species",)).nb_samples == 344
    limits = SynthLimits(max_samples=100, gan="on")
    assert _plan(penguin_md, limits, select_cols=("species",)).nb_samples == 100
    error = _refused(penguin_md, "QUERY_LIMIT_EXCEEDED", nb_samples=200_000)
    assert error.metadata == {"limit": "maxSamples", "maximum": "100000"}


def test_conditions_are_checked_on_the_metadata(penguin_md: DatasetMetadata) -> None:
    cols = ("species", "island")
    plan = _plan(penguin_md, select_cols=cols, condition="species = 'Adelie'")
    assert plan.condition == "species = 'Adelie'"
    for condition, words in (
        ("bill_length_mm > 3", "not a selected column"),
        ("species = ", "not a valid WHERE clause"),
        ("species > 'A' AND (", "not a valid WHERE clause"),
    ):
        error = _refused(penguin_md, select_cols=cols, condition=condition)
        assert words in error.message, error.message
    _refused(
        penguin_md,
        "QUERY_LIMIT_EXCEEDED",
        select_cols=cols,
        condition="species = 'Adelie'",
        nb_samples=20_000,
    )


def test_proto_conversion_and_canonical_form() -> None:
    message = query_pb2.Query(
        smartnoise_synth=query_pb2.SmartnoiseSynthQuery(
            synth_name=" MST",
            epsilon="1.50",
            select_cols=["species", "island"],
            synth_params_json='{ "b": 1, "a": 2 }',
            nullable=True,
            nb_samples=10,
        )
    )
    query = convert.query_from_proto(message)
    assert query == SmartnoiseSynthQuery(
        " MST",
        Decimal("1.50"),
        None,
        ("species", "island"),
        '{ "b": 1, "a": 2 }',
        True,
        nb_samples=10,
    )
    canonical = convert.canonical_query(message).smartnoise_synth
    assert (canonical.synth_name, canonical.epsilon, canonical.delta) == ("mst", "1.5", "")
    assert canonical.synth_params_json == '{"a":2,"b":1}'
    message.smartnoise_synth.delta = "abc"
    with pytest.raises(InvalidQuery, match="delta"):
        convert.query_from_proto(message)


def test_the_client_s_constraints_reach_the_executor_as_lomas_writes_them(
    penguin_md: DatasetMetadata,
) -> None:
    """SmartNoise-Synth transformer objects, as Lomas users pass them, through the Python client's
    serialisation (smartnoise-synth-logger's form) to the executor's allow-list."""
    from snsynth.transform import (
        AnonymizationTransformer,
        BinTransformer,
        ChainTransformer,
        LabelTransformer,
        OneHotEncoder,
    )

    from lomas.client.smartnoise_synth_client import constraints_json

    text = constraints_json(
        {
            "bill_length_mm": BinTransformer(bins=20, lower=32, upper=60),
            "species": ChainTransformer([LabelTransformer(nullable=True), OneHotEncoder()]),
        }
    )
    plan = _plan(penguin_md, select_cols=("species", "bill_length_mm"), constraints_json=text)
    bill = plan.columns[1]
    assert (bill.bins, bill.lower, bill.upper) == (20, 32.0, 60.0)
    error = _refused(
        penguin_md,
        select_cols=("species",),
        constraints_json=constraints_json({"species": AnonymizationTransformer("email")}),
    )
    assert "AnonymizationTransformer" in error.message
