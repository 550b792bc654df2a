"""The query lifecycle's pure parts: the cost cache and the announced outcome."""

from __future__ import annotations

from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2, query_pb2
from lomas_gateway.lifecycle import CostCache, _announced_outcome


def descriptor(
    version: int = 1, metadata_json: str = '{"max_ids": 1}'
) -> dataset_pb2.DatasetDescriptor:
    return dataset_pb2.DatasetDescriptor(
        name="PENGUIN", version=version, metadata_json=metadata_json
    )


def sql(text: str, epsilon: str = "1") -> query_pb2.Query:
    return query_pb2.Query(
        smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql=text, epsilon=epsilon, delta="0")
    )


def cost(epsilon: str) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta="0"))


def test_a_cost_is_keyed_by_the_whole_descriptor_and_the_canonical_query() -> None:
    key = CostCache.key(descriptor(), sql("SELECT COUNT(*) FROM df"))
    assert key == CostCache.key(descriptor(), sql("SELECT  COUNT(*)\n FROM df"))
    assert key != CostCache.key(descriptor(version=2), sql("SELECT COUNT(*) FROM df"))
    assert key != CostCache.key(
        descriptor(metadata_json='{"max_ids": 2}'), sql("SELECT COUNT(*) FROM df")
    )
    assert key != CostCache.key(descriptor(), sql("SELECT COUNT(*) FROM df", epsilon="2"))


def test_the_cost_cache_keeps_the_most_recently_used() -> None:
    cache = CostCache(max_entries=2)
    cache.put(b"a", cost("1"))
    cache.put(b"b", cost("2"))
    assert cache.get(b"a") == cost("1")  # now the most recent
    cache.put(b"c", cost("3"))
    assert cache.get(b"b") is None
    assert cache.get(b"a") == cost("1") and cache.get(b"c") == cost("3")


def test_an_announcement_is_used_only_when_it_carries_this_query() -> None:
    stored = archive_pb2.ArchivedQuery(query_id="q-1", release=b"arrow")
    payload = stored.SerializeToString()
    assert _announced_outcome(payload, "q-1") == stored
    assert _announced_outcome(payload, "q-2") is None  # another query's outcome
    assert _announced_outcome(b"", "q-1") is None  # no outcome carried: read the archive
    assert _announced_outcome(b"\xff\xff\xff", "q-1") is None  # unreadable: read the archive
