"""What clients send that every service parses the same way: page tokens and privacy decimals.

The helpers live in `lomas_common` and every List RPC and every privacy value goes through them;
the gateway-level checks are in `test_gateway_public_limits.py`.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from lomas.common.v1 import privacy_pb2, query_pb2
from lomas_budget.convert import delta_from_text
from lomas_common.convert import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_CHARS,
    Page,
    privacy_loss_from_proto,
)
from lomas_common.errors import Code, InvalidArgument
from lomas_common.privacy import PrivacyValueError, parse_decimal
from lomas_executor.convert import query_from_proto


def token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def refused(page_size: int, page_token: str, *scope: str) -> str:
    with pytest.raises(InvalidArgument) as error:
        Page.of(page_size, page_token, *scope)
    assert error.value.code is Code.INVALID_ARGUMENT
    return error.value.reason


def test_a_page_token_leads_to_the_next_page_of_the_same_list() -> None:
    first = Page.of(0, "", "ListGrants", "alice")
    assert (first.offset, first.limit) == (0, DEFAULT_PAGE_SIZE)
    following = first.next_token(DEFAULT_PAGE_SIZE, has_more=True)
    assert first.next_token(3, has_more=False) == ""
    second = Page.of(0, following, "ListGrants", "alice")
    assert (second.offset, second.limit) == (DEFAULT_PAGE_SIZE, DEFAULT_PAGE_SIZE)
    # page_size above the maximum is clamped, not refused.
    assert Page.of(10**9, following, "ListGrants", "alice").limit == MAX_PAGE_SIZE
    assert refused(-1, "", "ListGrants", "alice") == "PAGE_SIZE_INVALID"


def test_a_page_token_of_another_list_is_refused() -> None:
    alices = Page.of(5, "", "ListArchivedQueries", "alice", "PENGUIN").next_token(5, has_more=True)
    for scope in (
        ("ListArchivedQueries", "bob", "PENGUIN"),  # another user
        ("ListArchivedQueries", "alice", "IRIS"),  # another dataset
        ("ListGrants", "alice"),  # another list
        ("ListArchivedQueries", "alicePENGUIN", ""),  # no concatenation collisions
    ):
        assert refused(5, alices, *scope) == "PAGE_TOKEN_INVALID"
    assert Page.of(5, alices, "ListArchivedQueries", "alice", "PENGUIN").offset == 5


@pytest.mark.parametrize(
    "bad",
    [
        base64.urlsafe_b64encode(b'{"offset": 1e999}').decode(),  # the hostile review's token
        base64.urlsafe_b64encode(b'{"offset": 1e999, "list": ""}').decode(),
        token({"offset": 10**30, "list": ""}),
        token({"offset": -1, "list": ""}),
        token({"offset": 1.5, "list": ""}),
        token({"offset": True, "list": ""}),
        token({"offset": "3", "list": ""}),
        token({"offset": 3}),  # no list
        token({"offset": 3, "list": "", "extra": 1}),
        token([3]),
        token(None),
        "not base64 at all!",
        "QUJD",  # base64, not JSON
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "é" * 8,  # not ASCII
        "A" * (MAX_PAGE_TOKEN_CHARS + 1),
        base64.urlsafe_b64encode(b'{"offset": ' + b"9" * 5000 + b"}").decode(),
    ],
)
def test_malformed_page_tokens_are_invalid_arguments(bad: str) -> None:
    assert refused(10, bad, "ListUsers") == "PAGE_TOKEN_INVALID"


NON_ASCII = [
    "\u0661",  # Arabic-Indic digit one: Decimal() reads it as 1
    "\u0660.\u0665",
    "\uff11",  # fullwidth digit one
    "\u0967",  # Devanagari digit one
    "1\u00a0",  # no-break space
    "\u20031",  # em space
    "\t1",
    "1\n",
    "1_000",  # Decimal() takes underscores
    "0.\u0665",
    "1e\u0661",
]


@pytest.mark.parametrize("text", [*NON_ASCII, "", " ", ".", "e5", "1e", "+", "1.2.3", "0x1"])
def test_a_decimal_is_ascii_digits_only(text: str) -> None:
    with pytest.raises(PrivacyValueError):
        parse_decimal(text, name="epsilon")


def test_ascii_decimals_and_floats_are_accepted_as_written() -> None:
    assert parse_decimal(" 1.5 ", name="epsilon") == Decimal("1.5")
    assert parse_decimal("+2", name="epsilon") == 2
    assert parse_decimal(".5", name="epsilon") == Decimal("0.5")
    assert parse_decimal("5.", name="epsilon") == 5
    assert parse_decimal("1E-5", name="delta") == Decimal("0.00001")
    assert parse_decimal(0.1, name="epsilon") == Decimal("0.1")  # the shortest repr
    assert parse_decimal(3, name="epsilon") == 3
    for bad in ("-1", "nan", "inf", "Infinity", "1e20", "1e999999"):
        with pytest.raises(PrivacyValueError):
            parse_decimal(bad, name="epsilon")
    with pytest.raises(PrivacyValueError):
        parse_decimal("1e9999999", name="epsilon")  # exponent too long to be a number here
    for bad_float in (float("nan"), float("inf"), -0.5, 1e20):
        with pytest.raises(PrivacyValueError):
            parse_decimal(bad_float, name="epsilon")


def test_floats_are_read_through_ascii_only() -> None:
    """A float is never parsed from text a client wrote: its repr is ASCII by construction, so the
    float path cannot bring a non-ASCII digit in."""
    for value in (0.1, 1e-17, 123456.789, 5e-324, 1.7976931348623157e19):
        assert repr(value).isascii()
        assert parse_decimal(value, name="epsilon") == Decimal(repr(value))


@pytest.mark.parametrize("text", NON_ASCII)
def test_every_place_a_client_decimal_enters_refuses_non_ascii(text: str) -> None:
    # Allocations, caps and costs on the wire (gateway, budget ledger).
    with pytest.raises(InvalidArgument) as loss:
        privacy_loss_from_proto(
            privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=text, delta="0")),
            field="allocation",
        )
    assert loss.value.reason == "PRIVACY_LOSS_INVALID"
    # The delta of a budget view (GetBudget, GetLedger, ListLedgers).
    with pytest.raises(InvalidArgument) as delta:
        delta_from_text(text)
    assert delta.value.reason == "PRIVACY_LOSS_INVALID"
    # The parameters of a query (SmartNoise-SQL epsilon and delta, OpenDP fixed delta and scale).
    queries = [
        query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql="SELECT 1", epsilon=text, delta="0")
        ),
        query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(sql="SELECT 1", epsilon="1", delta=text)
        ),
        query_pb2.Query(opendp=query_pb2.OpenDpQuery(measurement_json="{}", fixed_delta=text)),
    ]
    for query in queries:
        with pytest.raises(InvalidArgument) as invalid:
            query_from_proto(query)
        assert invalid.value.reason == "QUERY_INVALID"
