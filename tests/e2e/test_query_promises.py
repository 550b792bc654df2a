"""The query path's promises under concurrency and hostile spelling (issue: the query path).

One charge per query, at most one release per query: identical queries sent at once share one draw;
spellings of one query are one query; what differs inside a string literal is another query."""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import redis
import yaml
from mesh_testing import RunningMesh

from lomas.client import Client, ExecutionFailed, InvalidArgument, InvalidQuery
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_executor.demo import penguin_metadata_text

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


def test_spellings_of_one_query_are_free_replays(platform: RunningMesh) -> None:
    client = new_researcher(platform)
    first = client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.7, delta=0)
    spent = client.get_total_spent_budget()
    for sql, epsilon in (
        ("select species, count(*) as n from df group by species", 0.7),
        ("SELECT  species,\n  COUNT(*) AS n\nFROM df\nGROUP BY species;", "0.70"),
        (
            "SELECT species, COUNT(*) AS n FROM df -- per species\nGROUP BY species",
            Decimal("0.700"),
        ),
        ("SELECT species, /* all */ COUNT(*) AS n FROM df GROUP BY species", "7e-1"),
    ):
        again = client.smartnoise_sql.query(sql, epsilon=epsilon, delta=0)
        assert again.attrs["replay"] is True, sql
        assert again.attrs["query_id"] == first.attrs["query_id"]
        pd.testing.assert_frame_equal(again, first)
    assert client.get_total_spent_budget() == spent
    assert len(client.get_previous_queries()) == 1


def test_white_space_inside_a_string_literal_makes_another_query(platform: RunningMesh) -> None:
    client = new_researcher(platform)
    one = client.smartnoise_sql.query(
        "SELECT COUNT(*) AS n FROM df WHERE species = 'q y'", epsilon=0.5, delta=0
    )
    two = client.smartnoise_sql.query(
        "SELECT COUNT(*) AS n FROM df WHERE species = 'q  y'", epsilon=0.5, delta=0
    )
    assert not one.attrs["replay"] and not two.attrs["replay"]
    assert one.attrs["query_id"] != two.attrs["query_id"]
    assert client.get_total_spent_budget()["total_spent_epsilon"] == Decimal("1.0")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT no_such_col, COUNT(*) AS n FROM df GROUP BY no_such_col",
        "SELECT COUNT(no_such_col) AS n FROM df",
        "SELECT COUNT(*) AS n FROM df WHERE no_such_col > 1",
        "SELECT species, COUNT(*) AS n FROM df GROUP BY species ORDER BY no_such_col",
        "SELECT species, COUNT(*) AS n FROM df GROUP BY species HAVING no_such_col > 2",
    ],
)
def test_an_unknown_column_anywhere_is_refused_before_any_charge(
    platform: RunningMesh, sql: str
) -> None:
    client = new_researcher(platform)
    before = client.get_total_spent_budget()
    with pytest.raises(InvalidQuery) as refused:
        client.smartnoise_sql.query(sql, epsilon=0.5, delta=0)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert client.get_total_spent_budget() == before
    assert client.get_previous_queries() == []


def test_a_request_id_names_one_query(platform: RunningMesh) -> None:
    client = new_researcher(platform)
    request_id = str(uuid.uuid4())
    first = client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id)
    spent = client.get_total_spent_budget()
    with pytest.raises(InvalidArgument) as reused:
        client.smartnoise_sql.query(
            "SELECT COUNT(*) AS n FROM df", epsilon=0.5, delta=0, request_id=request_id
        )
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert client.get_total_spent_budget() == spent
    retried = client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id)
    assert retried.attrs["query_id"] == first.attrs["query_id"]
    assert client.get_total_spent_budget() == spent


def test_a_request_id_still_names_its_query_after_its_claim_expired(
    platform: RunningMesh,
) -> None:
    """The gateway skips the archive for a request id's first use (claims.py, releases.py): an id
    whose Redis claim expired (deleted here) is still answered by the archive, not run again."""
    client = new_researcher(platform)
    request_id = str(uuid.uuid4())
    first = client.smartnoise_sql.query(
        GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id, fresh=True
    )
    spent = client.get_total_spent_budget()
    config = platform.mesh.config
    with redis.Redis.from_url(config.redis_url) as store:
        assert store.delete(*store.keys(f"{config.queue_prefix}:request-claim:*")) > 0
        with pytest.raises(InvalidArgument) as reused:
            client.smartnoise_sql.query(
                "SELECT COUNT(*) AS n FROM df",
                epsilon=0.5,
                delta=0,
                request_id=request_id,
                fresh=True,
            )
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert client.get_total_spent_budget() == spent
        store.delete(*store.keys(f"{config.queue_prefix}:request-claim:*"))
        for fresh in (True, False):
            retried = client.smartnoise_sql.query(
                GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id, fresh=fresh
            )
            assert retried.attrs["query_id"] == first.attrs["query_id"]
            pd.testing.assert_frame_equal(retried, first)
    assert client.get_total_spent_budget() == spent


def test_zero_dummy_rows_are_refused(platform: RunningMesh) -> None:
    with platform.client() as client:
        for rows in (0, -1):
            with pytest.raises(InvalidArgument) as refused:
                client.get_dummy_dataset(nb_rows=rows)
            assert refused.value.reason == "DUMMY_ROWS_OUT_OF_RANGE"
            with pytest.raises(InvalidArgument):
                client.smartnoise_sql.query(
                    GROUP_COUNT, epsilon=0.5, delta=0, dummy=True, nb_rows=rows
                )
        assert len(client.get_dummy_dataset(nb_rows=1)) == 1


def test_delta_must_mean_privacy(platform: RunningMesh) -> None:
    client = new_researcher(platform, delta="0.5")
    before = client.get_total_spent_budget()
    gaussian = {"count": "gaussian"}
    with pytest.raises(InvalidQuery) as zero:
        client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0, mechanisms=gaussian)
    assert zero.value.reason == "DELTA_REQUIRED"
    with pytest.raises(InvalidQuery) as large:
        client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0.5, mechanisms=gaussian)
    assert large.value.reason == "DELTA_TOO_LARGE"
    assert Decimal(large.value.metadata["maximum"]) < Decimal(1) / 344
    assert client.get_total_spent_budget() == before
    charged = client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=1e-9, mechanisms=gaussian)
    assert charged.attrs["cost"]["delta"] == Decimal("1E-9")  # one mechanism: exactly as asked


def test_a_failure_after_data_access_names_its_charge_and_is_answered_once(
    platform: RunningMesh,
) -> None:
    # A source whose body does not match its metadata: found only when the data is read.
    frame = pd.read_csv(io.BytesIO(platform_csv(platform)))
    frame["bill_length_mm"] = frame["bill_length_mm"].astype(object)
    frame.loc[len(frame) // 2, "bill_length_mm"] = "not-a-number"
    path = platform.data_dir / f"corrupt-{uuid.uuid4().hex[:8]}.csv"
    frame.to_csv(path, index=False)
    name = f"CORRUPT_{uuid.uuid4().hex[:6].upper()}"
    user = f"researcher-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_dataset(name, local_source(path), penguin_metadata(), dataset_pb2.DATA_FORMAT_CSV)
        admin.add_user(user)
        admin.grant(user, name, approx_dp("10", "0.001"))
    client = platform.client(user, dataset=name)
    cost = client.smartnoise_sql.cost(GROUP_COUNT, epsilon=0.5, delta=0)
    request_id = str(uuid.uuid4())
    with pytest.raises(ExecutionFailed) as failed:
        client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id)
    assert failed.value.reason == "QUERY_EXECUTION_FAILED"
    assert failed.value.charged == cost
    assert "not-a-number" not in failed.value.message  # no data value in an error
    spent = client.get_total_spent_budget()
    assert spent["total_spent_epsilon"] == cost["epsilon"] > 0
    with pytest.raises(ExecutionFailed) as again:
        client.smartnoise_sql.query(GROUP_COUNT, epsilon=0.5, delta=0, request_id=request_id)
    assert again.value.metadata == failed.value.metadata
    assert client.get_total_spent_budget() == spent
    (archived,) = client.get_previous_queries()
    assert archived["error_reason"] == "QUERY_EXECUTION_FAILED"
    assert archived["cost"] == cost


def platform_csv(platform: RunningMesh) -> bytes:
    """The demo dataset's rows as CSV (dummy rows of its metadata: real-looking, not real)."""
    with platform.client() as client:
        text: str = client.get_dummy_dataset(nb_rows=200, seed=3).to_csv(index=False)
    return text.encode()


def penguin_metadata() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(penguin_metadata_text())
    return loaded
