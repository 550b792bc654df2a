"""Conversions between the shared protobuf messages and the shared domain values.

Each service has its own `convert` module for its own messages; this one holds what they share.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor

from lomas.common.v1 import privacy_pb2
from lomas_common.errors import InvalidArgument
from lomas_common.privacy import (
    PrivacyDefinition,
    PrivacyLoss,
    PrivacyValueError,
    format_decimal,
    parse_decimal,
)

DEFINITION_TO_PROTO = {
    PrivacyDefinition.APPROX_DP: privacy_pb2.PRIVACY_DEFINITION_APPROX_DP,
    PrivacyDefinition.PURE_DP: privacy_pb2.PRIVACY_DEFINITION_PURE_DP,
    PrivacyDefinition.RHO_ZCDP: privacy_pb2.PRIVACY_DEFINITION_RHO_ZCDP,
}
DEFINITION_FROM_PROTO = {v: k for k, v in DEFINITION_TO_PROTO.items()}


def definition_from_proto(value: privacy_pb2.PrivacyDefinition.ValueType) -> PrivacyDefinition:
    """UNSPECIFIED means the Lomas-compatible default, approximate DP."""
    if value == privacy_pb2.PRIVACY_DEFINITION_UNSPECIFIED:
        return PrivacyDefinition.APPROX_DP
    try:
        return DEFINITION_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument("unknown privacy definition", reason="PRIVACY_LOSS_INVALID") from None


def _decimal(text: str, name: str) -> Decimal:
    try:
        return parse_decimal(text or "0", name=name)
    except PrivacyValueError as error:
        raise InvalidArgument(str(error), reason="PRIVACY_LOSS_INVALID") from None


def privacy_loss_from_proto(message: privacy_pb2.PrivacyLoss, *, field: str) -> PrivacyLoss:
    """A wire privacy loss as a domain value; malformed numbers are INVALID_ARGUMENT."""
    kind = message.WhichOneof("loss")
    try:
        if kind == "approx_dp":
            return PrivacyLoss.approx_dp(
                _decimal(message.approx_dp.epsilon, f"{field}.epsilon"),
                _decimal(message.approx_dp.delta, f"{field}.delta"),
            )
        if kind == "pure_dp":
            return PrivacyLoss.pure_dp(_decimal(message.pure_dp.epsilon, f"{field}.epsilon"))
        if kind == "rho_zcdp":
            return PrivacyLoss.rho_zcdp(_decimal(message.rho_zcdp.rho, f"{field}.rho"))
    except PrivacyValueError as error:
        raise InvalidArgument(f"{field}: {error}", reason="PRIVACY_LOSS_INVALID") from None
    raise InvalidArgument(f"{field} must be set", reason="PRIVACY_LOSS_INVALID")


def privacy_loss_to_proto(loss: PrivacyLoss) -> privacy_pb2.PrivacyLoss:
    if loss.definition is PrivacyDefinition.APPROX_DP:
        return privacy_pb2.PrivacyLoss(
            approx_dp=privacy_pb2.ApproxDp(
                epsilon=format_decimal(loss.epsilon), delta=format_decimal(loss.delta)
            )
        )
    if loss.definition is PrivacyDefinition.PURE_DP:
        return privacy_pb2.PrivacyLoss(
            pure_dp=privacy_pb2.PureDp(epsilon=format_decimal(loss.epsilon))
        )
    return privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho=format_decimal(loss.rho)))


def zero_cost(like: privacy_pb2.PrivacyLoss) -> privacy_pb2.PrivacyLoss:
    """A zero loss of the same kind as `like` (what a free replay or a refunded query costs)."""
    kind = like.WhichOneof("loss")
    if kind == "pure_dp":
        return privacy_pb2.PrivacyLoss(pure_dp=privacy_pb2.PureDp(epsilon="0"))
    if kind == "rho_zcdp":
        return privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho="0"))
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon="0", delta="0"))


def metadata_from_json(text: str) -> dict[str, Any]:
    """Dataset metadata from its JSON text (the wire form, which keeps the column order)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise InvalidArgument("metadata must be a JSON object", reason="METADATA_INVALID") from None
    if not isinstance(value, dict):
        raise InvalidArgument("metadata must be a JSON object", reason="METADATA_INVALID")
    return value


def same_named(source: object, *names: str) -> dict[str, Any]:
    """The fields `names` of `source` as keyword arguments, for a message or record that takes them
    as they are and under the same names: `AuditEvent(time=..., **same_named(record, "actor"))`."""
    return {name: getattr(source, name) for name in names}


def timestamp_from_datetime(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def now_timestamp() -> timestamp_pb2.Timestamp:
    return timestamp_from_datetime(dt.datetime.now(dt.UTC))


# Paging (AIP-158), one helper for every List RPC of every service.
# `page_size`: 0 means DEFAULT_PAGE_SIZE; above MAX_PAGE_SIZE it is clamped to MAX_PAGE_SIZE (not
# refused, as AIP-158 recommends); negative is INVALID_ARGUMENT (PAGE_SIZE_INVALID).
# `page_token`: opaque to callers. It holds the position in the list and a digest of the list's
# identity (the RPC and its filters: user, dataset, ...), so a token is only valid for the list that
# issued it. Anything else (too long, not base64url JSON, wrong fields, a position out of range, a
# token of another list) is INVALID_ARGUMENT (PAGE_TOKEN_INVALID), never INTERNAL.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_TOKEN_CHARS = 200
MAX_PAGE_OFFSET = 2**31 - 1


def _page_token_invalid() -> InvalidArgument:
    return InvalidArgument("page_token is not valid for this list", reason="PAGE_TOKEN_INVALID")


def _list_digest(scope: tuple[str, ...]) -> str:
    """A short digest of a list's identity (its RPC name and filters)."""
    digest = hashlib.sha256()
    for part in scope:
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Page:
    """One page of a list: where it starts, how many rows, and the list it belongs to."""

    offset: int
    limit: int
    scope: tuple[str, ...]

    @classmethod
    def of(cls, page_size: int, page_token: str, *scope: str) -> Page:
        """The page a request asks for; `scope` names the list (its RPC and filter values)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if not page_token:
            return cls(0, limit, scope)
        if len(page_token) > MAX_PAGE_TOKEN_CHARS:
            raise _page_token_invalid()
        try:
            fields = json.loads(base64.urlsafe_b64decode(page_token.encode("ascii")))
        except (ValueError, UnicodeError, binascii.Error):
            raise _page_token_invalid() from None
        if not isinstance(fields, dict) or set(fields) != {"offset", "list"}:
            raise _page_token_invalid()
        offset = fields["offset"]
        # bool is an int in Python; floats (1e999 is inf) and strings are refused outright.
        if type(offset) is not int or not 0 <= offset <= MAX_PAGE_OFFSET:
            raise _page_token_invalid()
        if fields["list"] != _list_digest(scope):
            raise _page_token_invalid()
        return cls(offset, limit, scope)

    def next_token(self, returned: int, *, has_more: bool) -> str:
        """The token of the next page, or "" on the last page (lists fetch limit + 1 rows to know)."""
        if not has_more:
            return ""
        payload = {"offset": self.offset + returned, "list": _list_digest(self.scope)}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


# Keyset paging: the token holds the sort key of the last row returned, so a page starts right after
# it however many rows were added or removed meanwhile (an offset would repeat or skip rows). Keys are
# tuples of strings and integers (the list's ORDER BY columns, unique together).
KeyPart = str | int
MAX_KEY_PART_CHARS = 256
_MAX_KEY_INT = 2**63 - 1
MAX_KEYSET_TOKEN_CHARS = 1200


class PageRequest(Protocol):
    """A List request (AIP-158): its paging fields, and its message type, which names its RPC."""

    @property
    def DESCRIPTOR(self) -> Descriptor: ...

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


@dataclass(frozen=True)
class KeysetPage:
    """One page of a list ordered by a unique key: the rows after `after` (all rows when None)."""

    after: tuple[KeyPart, ...] | None
    limit: int
    scope: tuple[str, ...]

    @classmethod
    def of_request(cls, request: PageRequest, *filters: str) -> KeysetPage:
        """The page a List request asks for, of the list its RPC (`<Rpc>Request` names it, as Buf
        names requests) gives with these `filters`."""
        rpc = request.DESCRIPTOR.name.removesuffix("Request")
        return cls.of(request.page_size, request.page_token, rpc, *filters)

    @classmethod
    def of(cls, page_size: int, page_token: str, *scope: str) -> KeysetPage:
        """The page a request asks for; `scope` names the list (its RPC and filter values)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if not page_token:
            return cls(None, limit, scope)
        if len(page_token) > MAX_KEYSET_TOKEN_CHARS:
            raise _page_token_invalid()
        try:
            fields = json.loads(base64.urlsafe_b64decode(page_token.encode("ascii")))
        except (ValueError, UnicodeError, binascii.Error):
            raise _page_token_invalid() from None
        if not isinstance(fields, dict) or set(fields) != {"after", "list"}:
            raise _page_token_invalid()
        if fields["list"] != _list_digest(scope):
            raise _page_token_invalid()
        after = fields["after"]
        if not isinstance(after, list) or not 0 < len(after) <= 8:
            raise _page_token_invalid()
        for part in after:
            # bool is an int in Python; floats (1e999 is inf) are refused outright.
            if type(part) is int:
                if not -_MAX_KEY_INT <= part <= _MAX_KEY_INT:
                    raise _page_token_invalid()
            elif type(part) is not str or len(part) > MAX_KEY_PART_CHARS:
                raise _page_token_invalid()
        return cls(tuple(after), limit, scope)

    def next_token(self, last_key: tuple[KeyPart, ...] | None, *, has_more: bool) -> str:
        """The token of the page after the row whose key is `last_key`, or "" on the last page
        (lists fetch limit + 1 rows to know)."""
        if not has_more or last_key is None:
            return ""
        payload = {"after": list(last_key), "list": _list_digest(self.scope)}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
