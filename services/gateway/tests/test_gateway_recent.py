"""The bounded map behind the gateway's caches: recency order, a size bound, oversize values."""

from __future__ import annotations

from lomas_gateway.recent import RecentlyUsed


def test_the_least_recently_used_entries_go_first_once_the_count_is_passed() -> None:
    recent: RecentlyUsed[str, int] = RecentlyUsed(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1  # now the most recently used
    recent.put("c", 3)
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (1, None, 3)
    assert len(recent) == 2


def test_a_size_bound_counts_each_value_by_its_weight() -> None:
    recent: RecentlyUsed[str, bytes] = RecentlyUsed(10, len)
    recent.put("a", b"123456")
    recent.put("b", b"1234")
    recent.put("c", b"12")  # 12 bytes: "a" goes
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (None, b"1234", b"12")
    recent.put("b", b"1")  # a replaced value no longer weighs
    recent.put("d", b"1234567")
    assert (recent.get("b"), recent.get("c"), recent.get("d")) == (b"1", b"12", b"1234567")


def test_a_value_heavier_than_the_bound_is_not_kept_and_replaces_nothing_stale() -> None:
    recent: RecentlyUsed[str, bytes] = RecentlyUsed(4, len)
    recent.put("a", b"12")
    recent.put("a", b"12345")
    assert recent.get("a") is None  # the older value is not kept in its place either
    recent.pop("missing")  # popping what is not there changes nothing
    assert len(recent) == 0
