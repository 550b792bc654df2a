"""The heavy pool's SmartNoise-Synth GAN synthesizers, run by scripts/setup-heavy.sh in the heavy
pool's own environment (.venv-heavy, with PyTorch and Opacus): never collected by the main suite,
whose environment has no PyTorch (there, tests/e2e/test_smartnoise_synth.py checks the refusal)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import smartnoise_synth as ss
from lomas_executor.cache import DatasetCache
from lomas_executor.demo import make_penguin_like, penguin_metadata
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits, SynthLimits
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery
from lomas_executor.sources import DataFormat, DataSource

ROWS = 2_000
COLUMNS = ("species", "island", "bill_length_mm")
# Few epochs and small networks: this checks that each GAN runs here, not what it learns.
PARAMS = {
    "patectgan": '{"epochs": 2, "batch_size": 500, "generator_dim": [16], "discriminator_dim": [16]}',
    "pategan": '{"batch_size": 64, "teacher_iters": 1, "student_iters": 1}',
}
# PATE-GAN trains until its accountant reaches epsilon: a small one keeps it short.
EPSILON = {"patectgan": Decimal("3"), "pategan": Decimal("0.2")}


def test_this_environment_is_the_heavy_pool() -> None:
    assert ss.gan_dependencies_available(SynthLimits())


@pytest.mark.parametrize("name", sorted(ss.UNSOUND_ACCOUNTING))
def test_opacus_gans_are_refused_before_any_data(name: str) -> None:
    """Opacus 0.14 warns on every fit that its privacy budget is incorrect (seen here: the
    warning-as-error stopped both runs after the data was read), so they are refused up front."""
    metadata = DatasetMetadata.from_dict(penguin_metadata().to_dict() | {"rows": ROWS})
    query = SmartnoiseSynthQuery(name, Decimal("3"), Decimal("0.00001"), select_cols=COLUMNS)
    with pytest.raises(InvalidQuery) as refused:
        ss.plan(query, metadata, SynthLimits(), SqlLimits())
    assert refused.value.reason == "SYNTHESIZER_REFUSED"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_gan_synthesizers_fit_on_data_and_return_the_selected_columns(
    name: str, tmp_path: Path
) -> None:
    metadata = DatasetMetadata.from_dict(penguin_metadata().to_dict() | {"rows": ROWS})
    path = tmp_path / "penguin.csv"
    make_penguin_like(rows=ROWS, seed=1).to_csv(path, index=False)
    dataset = DatasetRef("PENGUIN", 1, DataSource.local(path), DataFormat.CSV, metadata)
    engine = QueryEngine(DatasetCache(max_bytes=64 * 1024**2))
    epsilon = EPSILON[name]
    query = SmartnoiseSynthQuery(
        name,
        epsilon,
        Decimal("0.00001"),
        select_cols=COLUMNS,
        synth_params_json=PARAMS[name],
        nullable=False,
        nb_samples=40,
    )
    assert engine.estimate_cost(query, dataset) == PrivacyLoss.approx_dp(
        epsilon, Decimal("0.00001")
    )
    samples = engine.run(query, dataset)
    assert list(samples.columns) == list(COLUMNS) and len(samples) == 40
    assert set(samples["species"].dropna()) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert samples["bill_length_mm"].dropna().between(30, 65).all()
