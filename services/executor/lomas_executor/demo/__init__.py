"""The PENGUIN demo dataset: its Lomas metadata and a generator of realistic penguin-like data.

The real Palmer penguins data (344 rows) is not shipped; `make_penguin_like` draws rows with the
same columns, the same species/island structure and per-species means and spreads close to the real
ones, within the metadata bounds, with a few missing values like the real data (two birds without
any measurement, a handful without sex).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from lomas_executor.metadata import DatasetMetadata

PENGUIN_ROWS = 344

# species: (share, islands with their shares, (mean, sd) of bill length, bill depth, flipper, mass)
_SPECIES: dict[str, tuple[float, dict[str, float], tuple[tuple[float, float], ...]]] = {
    "Adelie": (
        152 / 344,
        {"Torgersen": 52 / 152, "Biscoe": 44 / 152, "Dream": 56 / 152},
        ((38.8, 2.7), (18.3, 1.2), (190.0, 6.5), (3700.0, 460.0)),
    ),
    "Chinstrap": (
        68 / 344,
        {"Dream": 1.0},
        ((48.8, 3.3), (18.4, 1.1), (196.0, 7.1), (3733.0, 384.0)),
    ),
    "Gentoo": (
        124 / 344,
        {"Biscoe": 1.0},
        ((47.5, 3.1), (15.0, 1.0), (217.0, 6.5), (5076.0, 504.0)),
    ),
}
_MEASURES = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
_DECIMALS = (
    1,
    1,
    0,
    0,
)  # the real data has bills to 0.1 mm, whole flippers and grams (as floats)
_BLANK_ROWS = 2  # birds with no measurement and no sex
_EXTRA_MISSING_SEX = 9  # further birds with measurements but no sex


def penguin_metadata_text() -> str:
    """The PENGUIN metadata YAML, as Lomas ships it."""
    return resources.files(__package__).joinpath("penguin_metadata.yaml").read_text()


def penguin_metadata() -> DatasetMetadata:
    return DatasetMetadata.from_yaml_text(penguin_metadata_text())


def make_penguin_like(rows: int = PENGUIN_ROWS, seed: int = 0) -> pd.DataFrame:
    """A deterministic penguin-like frame (same rows and seed give the same frame)."""
    metadata = penguin_metadata()
    rng = np.random.default_rng(seed)
    species_names = list(_SPECIES)
    shares = np.array([_SPECIES[name][0] for name in species_names])
    species = rng.choice(np.array(species_names, dtype=object), size=rows, p=shares / shares.sum())

    islands = np.empty(rows, dtype=object)
    measures = {name: np.empty(rows, dtype=float) for name in _MEASURES}
    for name, (_, island_shares, stats) in _SPECIES.items():
        chosen = species == name
        count = int(chosen.sum())
        island_names = np.array(list(island_shares), dtype=object)
        islands[chosen] = rng.choice(island_names, size=count, p=list(island_shares.values()))
        for measure, (mean, sd), decimals in zip(_MEASURES, stats, _DECIMALS, strict=True):
            column = metadata.column(measure)
            values = np.clip(rng.normal(mean, sd, size=count), column["lower"], column["upper"])
            measures[measure][chosen] = np.round(values, decimals)

    sex = rng.choice(np.array(["MALE", "FEMALE"], dtype=object), size=rows)
    blank = rng.choice(rows, size=min(rows, _BLANK_ROWS + _EXTRA_MISSING_SEX), replace=False)
    for measure in _MEASURES:
        measures[measure][blank[:_BLANK_ROWS]] = np.nan
    sex[blank] = None

    return pd.DataFrame(
        {"species": species, "island": islands, **measures, "sex": sex},
        columns=list(metadata.column_names),
    )
