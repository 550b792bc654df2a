"""The query lifecycle's pure parts: the cost cache, the replay fingerprint and the announced
outcome."""

from __future__ import annotations

from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2, query_pb2
from lomas_common.errors import Code
from lomas_gateway.lifecycle import _announced_outcome
from lomas_gateway.outcomes import RemoteErrorFromArchive
from lomas_gateway.pricing import CostCache, Priced, query_fingerprint
from lomas_gateway.releases import KnownRelease, KnownReleases


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


def test_a_cost_is_keyed_by_the_caller_the_whole_descriptor_and_the_exact_query() -> None:
    key = CostCache.key("alice", descriptor(), sql("SELECT COUNT(*) FROM df"))
    assert key == CostCache.key("alice", descriptor(), sql("SELECT COUNT(*) FROM df"))
    # No textual normalisation: other white space is another key.
    assert key != CostCache.key("alice", descriptor(), sql("SELECT  COUNT(*)\n FROM df"))
    assert key != CostCache.key("bob", descriptor(), sql("SELECT COUNT(*) FROM df"))
    assert key != CostCache.key("alice", descriptor(version=2), sql("SELECT COUNT(*) FROM df"))
    assert key != CostCache.key(
        "alice", descriptor(metadata_json='{"max_ids": 2}'), sql("SELECT COUNT(*) FROM df")
    )
    assert key != CostCache.key("alice", descriptor(), sql("SELECT COUNT(*) FROM df", epsilon="2"))
    # Parts are length-prefixed: moving bytes between the subject and the query changes the key.
    assert CostCache.key("a", descriptor(), sql("b")) != CostCache.key("ab", descriptor(), sql(""))


# The budget bypass of the hostile review: one COUNT once white space is collapsed, three
# aggregates as SQL reads it (the comment ends at the newline).
ONE_COUNT = "SELECT COUNT(*) AS n -- , SUM(bill_length_mm) AS s1, SUM(body_mass_g) AS s2\nFROM df"
THREE_AGGREGATES = (
    "SELECT COUNT(*) AS n --\n, SUM(bill_length_mm) AS s1, SUM(body_mass_g) AS s2 FROM df"
)


def test_the_comment_trick_gets_its_own_cost_key_and_fingerprint() -> None:
    assert " ".join(ONE_COUNT.split()) == " ".join(THREE_AGGREGATES.split())  # the old key
    one, three = sql(ONE_COUNT), sql(THREE_AGGREGATES)
    assert CostCache.key("alice", descriptor(), one) != CostCache.key("alice", descriptor(), three)
    assert query_fingerprint("alice", descriptor(), one) != query_fingerprint(
        "alice", descriptor(), three
    )


def test_a_replay_fingerprint_is_the_caller_the_dataset_version_and_the_canonical_query() -> None:
    query = sql("SELECT COUNT(*) FROM df")
    fingerprint = query_fingerprint("alice", descriptor(), query)
    assert fingerprint == query_fingerprint("alice", descriptor(), sql("SELECT COUNT(*) FROM df"))
    assert fingerprint != query_fingerprint("bob", descriptor(), query)
    assert fingerprint != query_fingerprint("alice", descriptor(version=2), query)
    assert fingerprint != query_fingerprint("alice", descriptor(), sql("SELECT COUNT(*)  FROM df"))
    assert fingerprint != query_fingerprint(
        "alice", descriptor(), sql("SELECT COUNT(*) FROM df", "2")
    )


def priced(epsilon: str) -> Priced:
    return Priced(cost=cost(epsilon), canonical=sql("SELECT COUNT(*) FROM df", epsilon))


def test_the_cost_cache_keeps_the_most_recently_used() -> None:
    cache = CostCache(max_entries=2)
    cache.put(b"a", priced("1"))
    cache.put(b"b", priced("2"))
    assert cache.get(b"a") == priced("1")  # now the most recent
    cache.put(b"c", priced("3"))
    assert cache.get(b"b") is None
    assert cache.get(b"a") == priced("1") and cache.get(b"c") == priced("3")


def test_an_announcement_is_used_only_when_it_carries_this_query() -> None:
    stored = archive_pb2.ArchivedQuery(query_id="q-1", release=b"arrow")
    payload = stored.SerializeToString()
    assert _announced_outcome(payload, "q-1") == stored
    assert _announced_outcome(payload, "q-2") is None  # another query's outcome
    assert _announced_outcome(b"", "q-1") is None  # no outcome carried: read the archive
    assert _announced_outcome(b"\xff\xff\xff", "q-1") is None  # unreadable: read the archive


def test_a_stored_failure_names_what_it_charged() -> None:
    stored = archive_pb2.ArchivedQuery(
        query_id="q-9",
        status=archive_pb2.QUERY_STATUS_FAILED,
        error_reason="QUERY_EXECUTION_FAILED",
        error_message="the query failed after touching the data; its cost is charged",
        cost=privacy_pb2.PrivacyLoss(
            approx_dp=privacy_pb2.ApproxDp(epsilon="0.5", delta="0.00001")
        ),
    )
    error = RemoteErrorFromArchive(stored)
    assert (error.code, error.reason) == (Code.INTERNAL, "QUERY_EXECUTION_FAILED")
    assert error.metadata == {
        "queryId": "q-9",
        "chargedEpsilon": "0.5",
        "chargedDelta": "0.00001",
    }
    refunded = archive_pb2.ArchivedQuery(query_id="q-10", error_reason="COST_MISMATCH")
    assert RemoteErrorFromArchive(refunded).metadata == {"queryId": "q-10"}


def test_known_releases_keep_the_latest_within_their_byte_budget() -> None:
    releases = KnownReleases(max_total_bytes=10, max_release_bytes=6)
    releases.remember("a", KnownRelease("q1", b"1111", cost("1")))
    releases.remember("a", KnownRelease("q2", b"2222", cost("1")))  # a fresh draw replaces it
    releases.remember("b", KnownRelease("q3", b"3333", cost("1")))
    found = releases.find("a")
    assert found is not None and found.query_id == "q2"
    releases.remember("c", KnownRelease("q4", b"4444", cost("1")))  # over 10 bytes: b goes
    assert releases.find("b") is None
    assert releases.find("a") is not None and releases.find("c") is not None
    releases.remember("d", KnownRelease("q5", b"5555555", cost("1")))  # too large to keep
    assert releases.find("d") is None
