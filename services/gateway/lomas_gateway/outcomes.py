"""What a query ends with, as the gateway answers it: a release (new, retried or replayed) or a
stored failure raised again with its reason and charge."""

from __future__ import annotations

from dataclasses import dataclass

from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas_common.convert import privacy_loss_from_proto, zero_cost
from lomas_common.errors import Code, LomasError
from lomas_common.privacy import format_decimal
from lomas_gateway.releases import KnownRelease


@dataclass(frozen=True)
class QueryOutcome:
    query_id: str
    release: bytes
    cost: privacy_pb2.PrivacyLoss
    dummy: bool
    replay: bool = False


def known_release(outcome: QueryOutcome) -> KnownRelease:
    return KnownRelease(outcome.query_id, outcome.release, outcome.cost)


def replay_of(known: KnownRelease) -> QueryOutcome:
    """A free replay of an earlier release (re-releasing a release is post-processing)."""
    return QueryOutcome(
        query_id=known.query_id,
        release=known.release,
        cost=zero_cost(known.cost),  # a replay costs nothing
        dummy=False,
        replay=True,
    )


def stored_answer(stored: archive_pb2.ArchivedQuery) -> QueryOutcome:
    """A stored outcome as the caller's answer; a stored failure is raised with its reason."""
    if stored.status != archive_pb2.QUERY_STATUS_SUCCEEDED:
        raise RemoteErrorFromArchive(stored)
    return QueryOutcome(
        query_id=stored.query_id, release=stored.release, cost=stored.cost, dummy=False
    )


# The code a stored failure is reported with; other reasons (a source that cannot be read, say)
# describe a state of the platform, hence FAILED_PRECONDITION. COST_MISMATCH: the worker's own cost
# of the query differed from the reservation, so it refunded and did not run (send it again).
_STORED_FAILURE_CODES = {
    "QUERY_INVALID": Code.INVALID_ARGUMENT,
    "QUERY_LIMIT_EXCEEDED": Code.INVALID_ARGUMENT,
    "GROUP_KEYS_NOT_PUBLIC": Code.INVALID_ARGUMENT,
    "COST_MISMATCH": Code.FAILED_PRECONDITION,
    "QUERY_TIMEOUT": Code.DEADLINE_EXCEEDED,
    "QUERY_TIME_LIMIT_EXCEEDED": Code.RESOURCE_EXHAUSTED,
    "QUERY_EXECUTION_FAILED": Code.INTERNAL,
    "QUERY_CANCELLED": Code.CANCELLED,
}


class RemoteErrorFromArchive(LomasError):
    """A stored failure, reported again with its original reason (its charge is kept)."""

    def __init__(self, stored: archive_pb2.ArchivedQuery) -> None:
        self.code = _STORED_FAILURE_CODES.get(stored.error_reason, Code.FAILED_PRECONDITION)
        super().__init__(
            stored.error_message or "the query failed after data access; its cost is charged",
            reason=stored.error_reason or "QUERY_EXECUTION_FAILED",
            metadata={"queryId": stored.query_id, **_charged(stored.cost)},
        )


def _charged(cost: privacy_pb2.PrivacyLoss) -> dict[str, str]:
    """What a stored failure was charged, one value per key (`chargedEpsilon`, `chargedDelta` or
    `chargedRho`): zero for a failure refunded before data access."""
    if cost.WhichOneof("loss") is None:
        return {}
    loss = privacy_loss_from_proto(cost, field="cost")
    return {
        f"charged{name.capitalize()}": format_decimal(value)
        for name, value in loss.components().items()
    }
