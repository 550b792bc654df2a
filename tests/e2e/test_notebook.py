"""The researcher tour (examples/researcher.ipynb) runs clean against the embedded platform, and
what it shows is what the platform holds; notebooks are committed without their outputs.

The notebook runs in a kernel of this interpreter (the project's .venv), as a fresh user with its
own grant, so its spending disturbs no other test. Jupyter and IPython keep their files in the
test's temporary folder, never in the user's home.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import nbformat
import pytest
from mesh_testing import RunningMesh
from nbclient import NotebookClient
from nbformat import NotebookNode

from lomas.client.admin import approx_dp
from lomas_embedded import demo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOUR = EXAMPLES / "researcher.ipynb"
KERNEL = "lomas-mesh-venv"
GRANT = {"epsilon": Decimal("10"), "delta": Decimal("0.005")}
# The real queries the tour runs: three SmartNoise-SQL ones, an OpenDP measurement, a Polars query.
TOUR_QUERY_KINDS = ["opendp", "opendp", "smartnoise_sql", "smartnoise_sql", "smartnoise_sql"]

read_notebook: Callable[..., NotebookNode] = nbformat.read  # nbformat leaves it unannotated


def test_committed_notebooks_carry_no_outputs() -> None:
    notebooks = [
        path for path in sorted(EXAMPLES.rglob("*.ipynb")) if ".ipynb_checkpoints" not in path.parts
    ]
    assert TOUR in notebooks
    for path in notebooks:
        notebook = read_notebook(path, as_version=4)
        nbformat.validate(notebook)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.relative_to(ROOT)}, cell {index}: commit notebooks without outputs "
                "(Jupyter: Edit > Clear Outputs of All Cells)"
            )


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec that runs this interpreter, in a private Jupyter and IPython home."""
    home = tmp_path / "jupyter-home"
    spec = home / "path" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Lomas mesh (.venv)",
                "language": "python",
            }
        )
    )
    for variable, folder in {
        "JUPYTER_PATH": "path",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "IPYTHONDIR": "ipython",
    }.items():
        monkeypatch.setenv(variable, str(home / folder))
    return KERNEL


def tagged(notebook: NotebookNode, tag: str) -> NotebookNode:
    """The one cell that carries `tag` in its metadata."""
    cells: list[NotebookNode] = [
        cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])
    ]
    assert len(cells) == 1, f"one cell should be tagged {tag!r}"
    return cells[0]


def shown(cell: NotebookNode) -> str:
    """What a cell printed and displayed, as plain text."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_the_researcher_tour_runs_clean_and_spends_exactly_what_it_shows(
    platform: RunningMesh, kernel_name: str, tmp_path: Path
) -> None:
    researcher = f"Dr. Notebook {uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(researcher)
        admin.grant(researcher, demo.DATASET, approx_dp(GRANT["epsilon"], GRANT["delta"]))

    notebook = read_notebook(TOUR, as_version=4)
    runner = NotebookClient(
        notebook, kernel_name=kernel_name, timeout=60, resources={"metadata": {"path": tmp_path}}
    )
    runner.execute(
        env={
            **os.environ,
            "LOMAS_TARGET": platform.target,
            "LOMAS_TOKEN": platform.token(researcher),
        }
    )

    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"cell {index} failed"
            assert not (output.output_type == "stream" and output.name == "stderr"), (
                f"cell {index} wrote to stderr (a warning?): {output.text}"
            )

    # The platform's own account of the tour: its five real queries, charged exactly.
    with platform.client(researcher) as client:
        archive = client.get_previous_queries()
        initial = client.get_initial_budget()
        spent = client.get_total_spent_budget()
        remaining = client.get_remaining_budget()
    assert sorted(query["query_kind"] for query in archive) == TOUR_QUERY_KINDS
    epsilon = sum((query["cost"]["epsilon"] for query in archive), Decimal(0))
    delta = sum((query["cost"]["delta"] for query in archive), Decimal(0))
    assert epsilon > 0
    assert spent == {"total_spent_epsilon": epsilon, "total_spent_delta": delta}
    assert remaining == {
        "remaining_epsilon": GRANT["epsilon"] - epsilon,
        "remaining_delta": GRANT["delta"] - delta,
    }

    # What the notebook showed is that account, to the last digit.
    budget = shown(tagged(notebook, "budget"))
    for figures in (initial, spent, remaining):
        for name, value in figures.items():
            assert f"'{name}': Decimal('{value}')" in budget
    check = shown(tagged(notebook, "budget-check"))
    assert f"this tour spent: {epsilon} {delta}\n" in check
    assert check.endswith("(True, True, True, True)")
    refusal = shown(tagged(notebook, "refusal"))
    assert refusal.startswith("refused: PRIVACY_BUDGET_EXHAUSTED") and refusal.endswith("True")
    assert shown(tagged(notebook, "replay")) == "replay: True | same release: True\nTrue"
    archived = shown(tagged(notebook, "archive"))
    assert archived.count("smartnoise_sql") == 3 and archived.count("opendp") == 2
