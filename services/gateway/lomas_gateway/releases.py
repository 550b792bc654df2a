"""Releases this gateway has seen, by query fingerprint, so a free replay needs no archive read.

A release is never changed or withdrawn, and the fingerprint names the caller, the dataset version
and the query: a release found here is as good an answer to the same query as the archive's. The
archive read does one more thing, though: a retry gets the first answer of its request id. That
is known without the read when the request bound its id for the first time
(`claims.RequestClaims.bind`), so only then is a release taken from here (`QueryLifecycle.start`).

Kept: the latest release each fingerprint had through this replica (a look back that found one, a
query that released), most recently used first, within a byte budget; larger releases are left to
the archive.
"""

from __future__ import annotations

from dataclasses import dataclass

from lomas.common.v1 import privacy_pb2
from lomas_gateway.recent import RecentlyUsed

# What the releases kept may weigh in all, and at most one of them.
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_RELEASE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class KnownRelease:
    query_id: str
    release: bytes
    cost: privacy_pb2.PrivacyLoss  # what the release was charged (a replay is charged nothing)


class KnownReleases:
    def __init__(
        self, max_total_bytes: int = MAX_TOTAL_BYTES, max_release_bytes: int = MAX_RELEASE_BYTES
    ) -> None:
        self._max_release = max_release_bytes
        self._releases: RecentlyUsed[str, KnownRelease] = RecentlyUsed(
            max_total_bytes, lambda known: len(known.release)
        )

    def find(self, fingerprint: str) -> KnownRelease | None:
        return self._releases.get(fingerprint)

    def remember(self, fingerprint: str, known: KnownRelease) -> None:
        if len(known.release) > self._max_release:
            self._releases.pop(fingerprint)  # the latest release only, or none
            return
        self._releases.put(fingerprint, known)
