"""Conversions between the shared protobuf messages and the shared domain values.

Each service has its own `convert` module for its own messages; this one holds what they share.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any

from google.protobuf import timestamp_pb2

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


def definition_from_proto(value: int) -> PrivacyDefinition:
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


def timestamp_from_datetime(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def now_timestamp() -> timestamp_pb2.Timestamp:
    return timestamp_from_datetime(dt.datetime.now(dt.UTC))


MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, limit) for an offset-paginated list; tokens are opaque to callers."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return 0, limit
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(page_token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID") from None
    if offset < 0:
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return offset, limit


def next_page_token(offset: int, returned: int, *, has_more: bool) -> str:
    """The token of the next page, or "" on the last page (lists fetch limit + 1 rows to know)."""
    if not has_more:
        return ""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset + returned}).encode()).decode()
