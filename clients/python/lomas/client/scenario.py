"""The shared researcher scenario (clients/SCENARIO.md), played with this client's public API.

`python -m lomas.client.scenario ENV.json` prints the observation as JSON. The TypeScript and Go
clients run the same steps; a test compares the three observations.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

from lomas.client.client import Client
from lomas.client.errors import LomasError


def _loss(loss: dict[str, Decimal]) -> dict[str, str]:
    return {"epsilon": str(loss["epsilon"]), "delta": str(loss.get("delta", Decimal(0)))}


def _budget(client: Client) -> dict[str, dict[str, str]]:
    def strip(values: dict[str, Decimal], prefix: str) -> dict[str, str]:
        return _loss({key.removeprefix(prefix): value for key, value in values.items()})

    return {
        "initial": strip(client.get_initial_budget(), "initial_"),
        "spent": strip(client.get_total_spent_budget(), "total_spent_"),
        "remaining": strip(client.get_remaining_budget(), "remaining_"),
    }


def _refusal(call: Callable[[], object]) -> dict[str, str]:
    try:
        call()
    except LomasError as error:
        return {"code": error.code, "reason": error.reason}
    raise SystemExit("a call the scenario expects to be refused succeeded")


def observe(env: dict[str, Any]) -> dict[str, Any]:
    """Play the scenario's steps in order and return what was seen."""
    target, dataset = env["target"], env["dataset"]
    sql, epsilon, delta = env["sql"], env["epsilon"], env["delta"]
    with ExitStack() as clients:
        client = clients.enter_context(Client(target, dataset, token=env["token"]))

        def other(dataset: str, token: str) -> Client:
            return clients.enter_context(Client(target, dataset, token=token))

        metadata = client.get_dataset_metadata()
        dummy = client.get_dummy_dataset(nb_rows=env["dummy_rows"], seed=env["dummy_seed"])
        observation: dict[str, Any] = {
            "datasets": sorted(client.list_datasets()),
            "metadata": {"max_ids": metadata["max_ids"], "columns": sorted(metadata["columns"])},
            "dummy": {"rows": len(dummy), "columns": list(dummy.columns)},
            "cost": _loss(client.smartnoise_sql.cost(sql, epsilon=epsilon, delta=delta)),
            "budget_before": _budget(client),
        }
        release = client.smartnoise_sql.query(sql, epsilon=epsilon, delta=delta)
        observation["query"] = {
            "columns": list(release.columns),
            "rows": len(release),
            "cost": _loss(release.attrs["cost"]),
        }
        observation["budget_after"] = _budget(client)
        previous = client.get_previous_queries()
        observation["previous_queries"] = {
            "count": len(previous),
            "costs": [_loss(query["cost"]) for query in previous],
        }
        exhausting = env["exhausting_epsilon"]
        refusals = {
            "unknown_dataset": _refusal(
                other(env["unknown_dataset"], env["token"]).get_dataset_metadata
            ),
            "no_access": _refusal(
                other(env["forbidden_dataset"], env["token"]).get_dataset_metadata
            ),
            "budget_exhausted": _refusal(
                lambda: client.smartnoise_sql.query(sql, epsilon=exhausting, delta=delta)
            ),
            "invalid_sql": _refusal(
                lambda: client.smartnoise_sql.cost(env["invalid_sql"], epsilon=epsilon, delta=delta)
            ),
            "invalid_token": _refusal(other(dataset, env["invalid_token"]).get_remaining_budget),
        }
        observation["refusals"] = refusals
    return observation


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lomas.client.scenario ENV.json", file=sys.stderr)
        return 2
    env = json.loads(Path(argv[1]).read_text())
    print(json.dumps(observe(env), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
