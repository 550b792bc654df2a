"""The query archive (one outcome per query id) and the audit trail, beside the catalogue.

Domain code: plain records in, plain records out; no gRPC, no generated messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from lomas_admin import idempotency
from lomas_admin.idempotency import RequestLog, record_fields
from lomas_admin.keyset import Keyset
from lomas_admin.records import (
    ArchiveRecord,
    AuditRecord,
    Listing,
    SortKey,
    check_name,
    stamp,
)
from lomas_admin.schema import archive_from_row, audit_from_row, loss_params, schema
from lomas_common.db import Database, Transaction, UniqueViolation
from lomas_common.errors import InvalidArgument, NotFound

# Newest first. Submit times are ISO text in UTC, which sorts in time order; the query id breaks ties.
ARCHIVE = Keyset("archive", ("submitted_at", "query_id"), (str, str), descending=True)
# Newest first, in the order events were appended.
AUDIT = Keyset("audit_log", ("id",), (int,), descending=True)
# The most events one BatchRecordAuditEvents call appends: one transaction holds the write lock
# that every other writer waits for, so it stays short.
MAX_AUDIT_BATCH = 500


class QueryArchive:
    def __init__(self, db: Database, requests: RequestLog | None = None) -> None:
        self._db = db
        self._requests = requests or RequestLog(db)
        db.apply_schema(schema(db))

    # Archive -----------------------------------------------------------------------------------

    def record_query_result(self, record: ArchiveRecord) -> ArchiveRecord:
        """Store a query's outcome under its id. The first record wins: later ones get it back, so
        the query id is this call's idempotency key (a retry changes nothing)."""
        # Bounded: the query id is part of the list's page tokens.
        check_name(record.query_id, "query_id", "ARCHIVE_ENTRY_INVALID")

        def work(tx: Transaction) -> ArchiveRecord:
            row = tx.fetchone("SELECT * FROM archive WHERE query_id = ?", (record.query_id,))
            if row is not None:
                return archive_from_row(row)
            tx.execute(
                "INSERT INTO archive (query_id, user_name, dataset, query_json, definition, epsilon,"
                " delta, rho, succeeded, release, error_reason, error_message, submitted_at,"
                " completed_at, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.query_id,
                    record.user,
                    record.dataset,
                    record.query_json,
                    *loss_params(record.cost),
                    int(record.succeeded),
                    record.release,
                    record.error_reason,
                    record.error_message,
                    stamp(record.submitted_at),
                    stamp(record.completed_at),
                    record.fingerprint,
                ),
            )
            return record

        try:
            return self._db.run(work)
        except UniqueViolation:  # lost every retry to a concurrent writer: theirs is the record
            return self.get_archived_query(record.query_id)

    def get_archived_query(self, query_id: str) -> ArchiveRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM archive WHERE query_id = ?", (query_id,))
        if row is None:
            raise NotFound("no such archived query", reason="QUERY_NOT_FOUND")
        return archive_from_row(row)

    def find_released_query(self, user: str, fingerprint: str) -> ArchiveRecord | None:
        """The user's latest successful release of the query with this fingerprint, if any."""
        return self.look_back(user, fingerprint, "")[0]

    def look_back(
        self, user: str, fingerprint: str, query_id: str
    ) -> tuple[ArchiveRecord | None, ArchiveRecord | None]:
        """What the gateway reads before it charges, in one transaction: the user's latest release
        of the query with `fingerprint` (none when it is empty), and the stored outcome of
        `query_id` (a retry's first answer, success or failure; none when it is empty)."""
        with self._db.transaction(readonly=True) as tx:
            released = stored = None
            if fingerprint:
                released = tx.fetchone(
                    "SELECT * FROM archive WHERE user_name = ? AND fingerprint = ? AND succeeded = 1"
                    " ORDER BY completed_at DESC LIMIT 1",
                    (user, fingerprint),
                )
            if query_id:
                stored = tx.fetchone("SELECT * FROM archive WHERE query_id = ?", (query_id,))
        return (
            None if released is None else archive_from_row(released),
            None if stored is None else archive_from_row(stored),
        )

    def list_archived_queries(
        self, user: str, dataset: str, after: SortKey | None, limit: int
    ) -> Listing[ArchiveRecord]:
        """Outcomes newest first (by submit time, then query id), optionally of one user and one
        dataset, after the key `after` of a previous page."""
        with self._db.transaction(readonly=True) as tx:
            rows, next_after = ARCHIVE.fetch(
                tx, {"user_name": user, "dataset": dataset}, after, limit
            )
        return Listing([archive_from_row(r) for r in rows], next_after)

    # Audit trail --------------------------------------------------------------------------------

    def record_audit_event(self, event: AuditRecord, request_id: str = "") -> None:
        """Append one event; the trail is append-only (no update or delete path exists). A retry
        with the same request id appends nothing."""
        _append_audit_event(self._requests, event, request_id)

    def record_audit_events(
        self, events: Sequence[tuple[AuditRecord, str]], request_id: str = ""
    ) -> None:
        """Append (event, request id) pairs in one transaction, in order: each exactly as
        `record_audit_event` appends it, and all of them or none. `request_id`, when set, makes
        the whole batch's retry append nothing."""
        if not events:
            raise InvalidArgument(
                "a batch needs at least one event",
                reason="FIELD_REQUIRED",
                metadata={"field": "requests"},
            )
        if len(events) > MAX_AUDIT_BATCH:
            raise InvalidArgument(
                f"a batch holds at most {MAX_AUDIT_BATCH} events",
                metadata={"field": "requests", "maximum": str(MAX_AUDIT_BATCH)},
            )

        def work(tx: Transaction) -> None:
            for event, event_request_id in events:
                _append_audit_event(self._requests, event, event_request_id, tx)

        params = {"events": [[rid, record_fields(event)] for event, rid in events]}
        self._requests.run("BatchRecordAuditEvents", request_id, params, work, idempotency.NOTHING)

    def list_audit_events(
        self, actor: str, after: SortKey | None, limit: int
    ) -> Listing[AuditRecord]:
        """Events newest first, only `actor`'s when set, after the key `after` of a previous page."""
        with self._db.transaction(readonly=True) as tx:
            rows, next_after = AUDIT.fetch(tx, {"actor": actor}, after, limit)
        return Listing([audit_from_row(r) for r in rows], next_after)


def _append_audit_event(
    requests: RequestLog, event: AuditRecord, request_id: str, tx: Transaction | None = None
) -> None:
    """Append one event through `requests`, in its own transaction or in the batch's `tx`
    (RecordAuditEvent's key either way: a request id used there or in a batch is one and the
    same)."""

    def work(tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO audit_log (time, actor, method, request_json, code, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                stamp(event.time),
                event.actor,
                event.method,
                event.request_json,
                event.code,
                event.reason,
            ),
        )

    params = record_fields(event)
    requests.run("RecordAuditEvent", request_id, params, work, idempotency.NOTHING, tx=tx)
