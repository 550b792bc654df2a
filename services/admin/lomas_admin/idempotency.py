"""Request ids (AIP-155): a mutating call that carries a request id is answered once.

The first successful answer is stored in `admin_requests`, keyed by (method, request id), in the same
transaction as the change it reports, so either both exist or neither. A retry with the same id and the
same arguments gets that answer back and changes nothing; the same id with other arguments is
INVALID_ARGUMENT `REQUEST_ID_REUSED`. Failed calls store nothing: a retry runs again. Answers are kept
for the retention period (pruned as new ones arrive), which bounds how late a retry may come.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lomas_admin.records import (
    DatasetRecord,
    GrantRecord,
    UserRecord,
    check_name,
    parse_stamp,
    stamp,
)
from lomas_common.db import Database, Transaction
from lomas_common.errors import InvalidArgument
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss, format_decimal, parse_decimal

T = TypeVar("T")
R = TypeVar("R", UserRecord, DatasetRecord, GrantRecord)

DEFAULT_RETENTION = dt.timedelta(days=7)


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How an answer is stored (as JSON) and read back for a replay."""

    encode: Callable[[T], Any]
    decode: Callable[[Any], T]


def _fingerprint(params: Mapping[str, Any]) -> str:
    """A digest of a call's arguments (key order kept: metadata's order is its column order)."""
    text = json.dumps(params, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestLog:
    """Runs mutations once per (method, request id)."""

    def __init__(
        self,
        db: Database,
        retention: dt.timedelta = DEFAULT_RETENTION,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._db = db
        self._retention = retention
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def run(
        self,
        method: str,
        request_id: str,
        params: Mapping[str, Any],
        work: Callable[[Transaction], T],
        codec: Codec[T],
        *,
        tx: Transaction | None = None,
    ) -> T:
        """`work(tx)` in one transaction (re-run if it loses a race); with a request id, its first
        answer is stored there too and returned to every retry. Given `tx`, in the caller's
        transaction: several calls answered in one transaction (a batch), all or none; a race lost
        there fails `tx`, whose owner re-runs it."""
        if not request_id:
            return self._db.run(work) if tx is None else work(tx)
        check_name(request_id, "request_id", "INVALID_ARGUMENT")
        fingerprint = _fingerprint(params)

        def once(tx: Transaction) -> T:
            row = tx.fetchone(
                "SELECT fingerprint, response FROM admin_requests"
                " WHERE method = ? AND request_id = ?",
                (method, request_id),
            )
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise InvalidArgument(
                        "this request_id was already used for another request",
                        reason="REQUEST_ID_REUSED",
                        metadata={"requestId": request_id},
                    )
                return codec.decode(json.loads(row["response"]))
            now = self._clock()
            tx.execute(
                "DELETE FROM admin_requests WHERE created_at < ?",
                (stamp(now - self._retention),),
            )
            # Claim the id before the work: a concurrent call with it waits on this row and then
            # fails on the key, and the database layer re-runs `once` for it, which then finds this
            # call's answer (instead of, say, NOT_FOUND from a delete this call already made).
            tx.execute(
                "INSERT INTO admin_requests (method, request_id, fingerprint, response, created_at)"
                " VALUES (?, ?, ?, '', ?)",
                (method, request_id, fingerprint, stamp(now)),
            )
            result = work(tx)  # if it raises, the claim rolls back with it
            tx.execute(
                "UPDATE admin_requests SET response = ? WHERE method = ? AND request_id = ?",
                (json.dumps(codec.encode(result), separators=(",", ":")), method, request_id),
            )
            return result

        return self._db.run(once) if tx is None else once(tx)


# Codecs of the answers the admin store replays ------------------------------------------------


def _encode_loss(loss: PrivacyLoss) -> dict[str, str]:
    return {
        "definition": loss.definition.value,
        "epsilon": format_decimal(loss.epsilon),
        "delta": format_decimal(loss.delta),
        "rho": format_decimal(loss.rho),
    }


def _decode_loss(value: Any) -> PrivacyLoss:
    return PrivacyLoss(
        PrivacyDefinition(value["definition"]),
        epsilon=parse_decimal(value["epsilon"], name="epsilon"),
        delta=parse_decimal(value["delta"], name="delta"),
        rho=parse_decimal(value["rho"], name="rho"),
    )


def _field_to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return stamp(value)
    if isinstance(value, PrivacyLoss):
        return _encode_loss(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value  # str, int, bool: JSON as they are


def record_fields(record: Any, *, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """A record's fields as JSON values, in their declared order: what a replay stores, and (without
    the fields the store sets) what a call's fingerprint covers."""
    return {
        field.name: _field_to_json(getattr(record, field.name))
        for field in dataclasses.fields(record)
        if field.name not in leave_out
    }


def record_codec(kind: type[R]) -> Codec[R]:
    """Stores a record as `record_fields`; a replay builds it back from them (only times and
    privacy losses need parsing: the other values come back from JSON as they went in)."""
    field_types = typing.get_type_hints(kind)

    def decode(value: Any) -> R:
        fields: dict[str, Any] = {}
        for name, item in value.items():
            if field_types[name] is dt.datetime:
                fields[name] = parse_stamp(item)
            elif field_types[name] is PrivacyLoss:
                fields[name] = _decode_loss(item)
            else:
                fields[name] = item
        return kind(**fields)

    return Codec(record_fields, decode)


def _encode_nothing(_: None) -> None:
    return None


def _decode_nothing(_: Any) -> None:
    return None


USER = record_codec(UserRecord)
DATASET = record_codec(DatasetRecord)
GRANT = record_codec(GrantRecord)
NOTHING: Codec[None] = Codec(_encode_nothing, _decode_nothing)
