"""The researcher's page: my datasets, my budgets and my queries, through the researcher client
(GatewayService), for any signed-in user, admins included."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import yaml
from flask import Flask, render_template
from flask.typing import ResponseReturnValue

from lomas.client import Client
from lomas_dashboard.budgets import Budget, amounts_text
from lomas_dashboard.gateway import Gateway
from lomas_dashboard.rows import QUERY_KINDS
from lomas_dashboard.security import signed_in_token as token

# A release is the researcher's own DP output; the page shows its first rows, the notebook the rest.
RELEASE_ROWS_SHOWN = 20


@dataclass(frozen=True)
class MyQuery:
    submitted: str
    kind: str
    query: str
    cost: str
    outcome: str  # "released" or the error reason
    columns: list[str]
    rows: list[list[str]]
    more_rows: int


@dataclass(frozen=True)
class MyDataset:
    name: str
    budget: Budget
    metadata: str
    queries: list[MyQuery]


def _query_text(query: dict[str, Any]) -> str:
    sql = query.get("smartnoise_sql", {}).get("sql")
    return str(sql) if sql else "OpenDP pipeline"


def _release(frame: pd.DataFrame | None) -> tuple[list[str], list[list[str]], int]:
    if frame is None or frame.empty:
        return [], [], 0
    shown = frame.head(RELEASE_ROWS_SHOWN)
    rows = [[str(value) for value in row] for row in shown.itertuples(index=False)]
    return [str(column) for column in frame.columns], rows, len(frame) - len(shown)


def _my_query(previous: dict[str, Any]) -> MyQuery:
    submitted: datetime = previous["submitted_at"]
    columns, rows, more = _release(previous["result"])
    return MyQuery(
        submitted=submitted.strftime("%Y-%m-%d %H:%M:%S UTC"),
        kind=QUERY_KINDS.get(previous["query_kind"], "—"),
        query=_query_text(previous["query"]),
        cost=amounts_text(previous["cost"]),
        outcome=previous["error_reason"] or "released",
        columns=columns,
        rows=rows,
        more_rows=more,
    )


def _my_dataset(client: Client) -> MyDataset:
    budget = Budget.from_client(
        client.get_initial_budget(),
        client.get_total_spent_budget(),
        client.get_remaining_budget(),
    )
    metadata = yaml.safe_dump(client.get_dataset_metadata(), sort_keys=False, allow_unicode=True)
    queries = [_my_query(previous) for previous in client.get_previous_queries()]
    return MyDataset(client.dataset, budget, str(metadata), queries)


def register(app: Flask, gateway: Gateway) -> None:
    @app.get("/me")
    def my_view() -> ResponseReturnValue:
        mine = []
        for name in sorted(gateway.accessible_datasets(token())):
            with gateway.researcher(token(), name) as client:
                mine.append(_my_dataset(client))
        return render_template("me.html", datasets=mine)
