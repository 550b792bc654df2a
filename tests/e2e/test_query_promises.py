"""The query path's promises under concurrency and hostile spelling (issue: the query path).

One charge per query, at most one release per query: identical queries sent at once share one draw;
spellings of one query are one query; what differs inside a string literal is another query."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pandas as pd
from mesh_testing import RunningMesh

from lomas.client import Client
from lomas.client.admin import approx_dp
from lomas_embedded import demo

GROUP_COUNT = "SELECT species, COUNT(*) AS n FROM df GROUP BY species"


def new_researcher(platform: RunningMesh, epsilon: str = "50", delta: str = "0.001") -> Client:
    name = f"researcher-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp(epsilon, delta))
    return platform.client(name)


def test_identical_queries_sent_at_once_are_charged_once_and_share_one_release(
    platform: RunningMesh,
) -> None:
    client = new_researcher(platform)
    cost = client.smartnoise_sql.cost(GROUP_COUNT, epsilon=0.25, delta=0)

    def ask(_: int) -> pd.DataFrame:
        return client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.25, delta=0)

    with ThreadPoolExecutor(max_workers=20) as pool:
        releases = list(pool.map(ask, range(20)))

    assert sorted(release.attrs["replay"] for release in releases) == [False] + [True] * 19
    assert len({release.attrs["query_id"] for release in releases}) == 1
    for release in releases[1:]:
        pd.testing.assert_frame_equal(release, releases[0])  # one draw of noise
    assert client.get_total_spent_budget()["total_spent_epsilon"] == cost["epsilon"]
    assert len(client.get_previous_queries()) == 1


def test_fresh_queries_sent_at_once_each_pay_for_their_own_draw(platform: RunningMesh) -> None:
    client = new_researcher(platform)

    def ask(_: int) -> pd.DataFrame:
        return client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.25, delta=0, fresh=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        releases = list(pool.map(ask, range(4)))
    assert not any(release.attrs["replay"] for release in releases)
    assert len({release.attrs["query_id"] for release in releases}) == 4
    assert client.get_total_spent_budget()["total_spent_epsilon"] == Decimal("1.00")
