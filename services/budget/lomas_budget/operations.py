"""The frame every ledger operation runs in: one transaction of the store, the service's clock, and
the first answer of a request id (AIP-155).

Idempotency: every mutating operation takes an optional `request_id`. The first successful answer
is stored with the change, in the same transaction (`budget_requests`, keyed by the request id and
bound to the method and its arguments by a fingerprint). A replay with the same id and the same
arguments returns that first answer and changes nothing; the same id with another method or other
arguments is refused, InvalidArgument (REQUEST_ID_REUSED), and changes nothing either. A failed
call stores nothing, so its retry runs for real. The sweep forgets first answers older than the
retention period.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from lomas_budget.anchoring import LedgerAnchor
from lomas_budget.codec import Codec, fingerprint
from lomas_budget.model import (
    DEFAULT_REQUEST_RETENTION_SECONDS,
    DEFAULT_RESERVATION_TTL_SECONDS,
    MAX_RESERVATION_TTL_SECONDS,
    StoredRequest,
    stamp,
    utc_now,
)
from lomas_budget.store import LedgerSession, LedgerStore
from lomas_common.errors import InvalidArgument

T = TypeVar("T")


class LedgerOperations:
    """The store, the clock and the settings that the ledger's operations share, and the anchor
    that checkpoints the ledgers outside the store (None: no checkpoints kept)."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS,
        request_retention_seconds: int = DEFAULT_REQUEST_RETENTION_SECONDS,
        anchor: LedgerAnchor | None = None,
    ) -> None:
        if not 0 < reservation_ttl_seconds <= MAX_RESERVATION_TTL_SECONDS:
            raise ValueError("the reservation TTL must be positive and at most 7 days")
        if request_retention_seconds <= reservation_ttl_seconds:
            raise ValueError("request ids must be kept longer than reservations live")
        self._store = store
        self._clock = clock
        self.reservation_ttl_seconds = reservation_ttl_seconds
        self.request_retention_seconds = request_retention_seconds
        self.anchor = anchor

    def _now(self) -> str:
        return stamp(self._clock())

    def _read(self, work: Callable[[LedgerSession], T]) -> T:
        """Run a read-only `work` in one snapshot."""
        return self._store.run(work, readonly=True)

    def _once(
        self,
        request_id: str | None,
        method: str,
        params: dict[str, Any],
        work: Callable[[LedgerSession], T],
        codec: Codec[T],
    ) -> T:
        """Run `work` in one transaction; with a request id, store its first answer there too and
        return that answer to replays."""
        if not request_id:
            return self._store.run(work, pipelined=True)
        bound_to = fingerprint(method, params)

        def once(session: LedgerSession) -> T:
            stored = session.find_request(request_id)
            if stored is not None:
                if stored.method != method or stored.fingerprint != bound_to:
                    raise InvalidArgument(
                        "this request id was already used for another request",
                        reason="REQUEST_ID_REUSED",
                        metadata={"requestId": request_id},
                    )
                return codec.loads(stored.response)
            result = work(session)
            session.insert_request(
                StoredRequest(request_id, method, bound_to, codec.dumps(result)), self._now()
            )
            return result

        return self._store.run(once, pipelined=True)


__all__ = ["LedgerOperations"]
