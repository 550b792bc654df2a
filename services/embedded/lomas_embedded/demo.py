"""Demo content of the embedded default: a penguin-like dataset, an admin and Dr. Antartica."""

from __future__ import annotations

from pathlib import Path

import yaml

from lomas.client.admin import AdminClient, approx_dp, local_source
from lomas.client.errors import AlreadyExists
from lomas.common.v1 import dataset_pb2
from lomas_executor.demo import make_penguin_like, penguin_metadata_text

ADMIN = "admin"
RESEARCHER = "Dr. Antartica"
DATASET = "PENGUIN"
EPSILON = "10"
DELTA = "0.005"


def write_penguin_dataset(directory: Path) -> Path:
    """A generated 344-row table following the PENGUIN metadata (the project's own copy)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "penguin.csv"
    if not path.exists():
        make_penguin_like().to_csv(path, index=False)
    return path


def seed(admin: AdminClient, data_dir: Path) -> None:
    """Register the demo dataset, researcher and grant; running it again changes nothing."""
    csv_path = write_penguin_dataset(data_dir / "datasets")
    metadata = yaml.safe_load(penguin_metadata_text())
    for action in (
        lambda: admin.add_dataset(
            DATASET, local_source(csv_path), metadata, dataset_pb2.DATA_FORMAT_CSV
        ),
        lambda: admin.add_user(RESEARCHER),
        lambda: admin.grant(RESEARCHER, DATASET, approx_dp(EPSILON, DELTA)),
    ):
        try:
            action()
        except AlreadyExists:
            pass
