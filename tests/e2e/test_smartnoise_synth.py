"""SmartNoise-Synth queries end to end, through the public API and the heavy worker, in both modes:
Lomas's cases (refusals, exactly the selected columns and rows), the exact charge, the GANs refused
without the heavy pool's dependencies, and costs that never read the data."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from typing import Any

import pytest
from mesh_testing import RunningMesh, dataset_without_its_file, new_researcher

from lomas.client import Client, InvalidQuery, LomasError, PoolUnavailable
from lomas_embedded import demo

COLUMNS = ["species", "island"]
# Few columns keep mst fast (it estimates every pair of them).
MST: dict[str, Any] = {"synth_name": "mst", "epsilon": "1", "select_cols": COLUMNS}


def researcher(platform: RunningMesh, dataset: str = demo.DATASET) -> Client:
    return new_researcher(platform, "synth", dataset)


def spent(client: Client) -> dict[str, Decimal]:
    return {k.removeprefix("total_spent_"): v for k, v in client.get_total_spent_budget().items()}


def remaining(client: Client) -> dict[str, Decimal]:
    return {k.removeprefix("remaining_"): v for k, v in client.get_remaining_budget().items()}


def test_lomas_refusals_carry_their_reason_and_cost_nothing(platform: RunningMesh) -> None:
    client = researcher(platform)
    with pytest.raises(InvalidQuery) as model:
        client.smartnoise_synth.query("mst", 1.0, return_model=True, select_cols=COLUMNS)
    assert (model.value.code, model.value.reason) == ("INVALID_ARGUMENT", "QUERY_INVALID")
    assert "model" in model.value.message
    with pytest.raises(InvalidQuery) as unknown:
        client.smartnoise_synth.query("i_do_not_exist", 1.0)
    assert (unknown.value.code, unknown.value.reason) == ("INVALID_ARGUMENT", "SYNTHESIZER_REFUSED")
    assert unknown.value.metadata == {"synthesizer": "i_do_not_exist"}
    with pytest.raises(InvalidQuery) as column:
        client.smartnoise_synth.query("mst", 1.0, select_cols=["species", "idonotexist"])
    assert column.value.metadata == {"column": "idonotexist"}
    assert spent(client) == {"epsilon": Decimal(0), "delta": Decimal(0)}


def test_gans_without_the_heavy_pool_fail_their_precondition(platform: RunningMesh) -> None:
    # The default install never has PyTorch (scripts/setup-heavy.sh installs it elsewhere).
    assert importlib.util.find_spec("torch") is None
    client = researcher(platform)
    for call in (client.smartnoise_synth.cost, client.smartnoise_synth.query):
        with pytest.raises(PoolUnavailable) as refused:
            call("patectgan", 1.0, 1e-6, COLUMNS)
        assert (refused.value.code, refused.value.reason) == (
            "FAILED_PRECONDITION",
            "HEAVY_POOL_UNAVAILABLE",
        )
        assert refused.value.metadata == {"pool": "heavy", "synthesizer": "patectgan"}
        assert "heavy worker pool" in refused.value.message
    assert spent(client) == {"epsilon": Decimal(0), "delta": Decimal(0)}


def test_samples_have_the_selected_columns_and_rows_and_cost_exactly_the_estimate(
    platform: RunningMesh,
) -> None:
    client = researcher(platform)
    cost = client.smartnoise_synth.cost(**MST)
    assert cost == {"epsilon": Decimal("1"), "delta": Decimal("1e-9")}
    before = remaining(client)
    samples = client.smartnoise_synth.query(**MST, nb_samples=50, nullable=False)
    assert list(samples.columns) == COLUMNS and len(samples) == 50
    assert set(samples["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert set(samples["island"]) <= {"Torgersen", "Biscoe", "Dream"}
    assert samples.attrs["cost"] == cost
    assert spent(client) == cost
    after = remaining(client)
    assert {key: before[key] - after[key] for key in before} == cost


def test_costs_and_dummy_runs_never_read_the_data(platform: RunningMesh) -> None:
    client = researcher(platform, dataset_without_its_file(platform, "PENGUIN_SYNTH_GONE"))
    cost = client.smartnoise_synth.cost("mwem", "0.5", select_cols=COLUMNS)
    assert cost == {"epsilon": Decimal("0.5"), "delta": Decimal(0)}
    dummy = client.smartnoise_synth.query(**MST, nb_samples=7, dummy=True, nb_rows=60)
    assert list(dummy.columns) == COLUMNS and len(dummy) == 7
    with pytest.raises(LomasError) as missing:
        client.smartnoise_synth.query(**MST, nb_samples=7)
    assert (missing.value.code, missing.value.reason) == (
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
    )
    assert spent(client) == {"epsilon": Decimal(0), "delta": Decimal(0)}
