"""Relays: public calls that one internal service answers alone.

Most admin RPCs mirror an internal RPC of the same name: the public request and response declare
the same fields as the internal ones (the admin API adds nothing but the admin-role check). Such a
call is relayed as it is (`mirror`). The others build the internal request field by field, adding
what no caller may set (the actor, the caller's own name), and relay the answer (`relay`).

Messages are mirrored by field name, never as bytes: an unknown field a caller slips in never
reaches an internal service, and an internal-only field never leaves the mesh. Two messages that
do not declare the same fields are refused (TypeError, an INTERNAL error to the caller), so a
field added on one side only cannot pass unseen or silently stay unset.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message


class Peer(Protocol):
    """A client of one internal service (`lomas_common.peers.AsyncPeer` in production)."""

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any: ...


class PageRequest(Protocol):
    """The paging fields every List request has (AIP-158)."""

    page_size: int
    page_token: str


PageRequestT = TypeVar("PageRequestT", bound=PageRequest)
MessageT = TypeVar("MessageT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


def mirrored(message: Message, target_type: type[MessageT]) -> MessageT:
    """`message` as a `target_type`, a message that declares the same fields: each field is copied
    by name (one that tracks presence only when it is set)."""
    names = {field.name for field in message.DESCRIPTOR.fields}
    if names != {field.name for field in target_type.DESCRIPTOR.fields}:
        raise TypeError(
            f"{message.DESCRIPTOR.full_name} and {target_type.DESCRIPTOR.full_name} do not "
            "declare the same fields"
        )
    return target_type(
        **{
            field.name: getattr(message, field.name)
            for field in message.DESCRIPTOR.fields
            if not field.has_presence or message.HasField(field.name)
        }
    )


async def relay(
    peer: Peer,
    method: str,
    internal_request: Message,
    response_type: type[ResponseT],
    *,
    timeout: float | None = None,
) -> ResponseT:
    """The public response to a call that `method` of `peer` answers alone: its answer, mirrored."""
    answer = await peer.call(method, internal_request, timeout=timeout)
    return mirrored(answer, response_type)


async def mirror(
    peer: Peer,
    method: str,
    request: Message,
    internal_request_type: type[Message],
    response_type: type[ResponseT],
    *,
    timeout: float | None = None,
) -> ResponseT:
    """A public call that is `method` of `peer` as it is: the request and the answer mirrored.
    Paging included: the caller's page size and token go through unchanged, because the service
    that owns the rows validates them, caps the page size and binds its tokens to the list."""
    internal_request = mirrored(request, internal_request_type)
    return await relay(peer, method, internal_request, response_type, timeout=timeout)


async def relay_page(
    peer: Peer, method: str, internal_request: PageRequestT, public: PageRequest
) -> Any:
    """One page of an internal service's list for a public List RPC that shapes its own answer:
    the caller's page size and token go through unchanged (as in `mirror`)."""
    internal_request.page_size = public.page_size
    internal_request.page_token = public.page_token
    return await peer.call(method, internal_request)
