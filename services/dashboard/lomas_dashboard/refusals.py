"""How a refusal by the platform reads on a page."""

from __future__ import annotations

from lomas.client import LomasError

# The HTTP status of a page that shows a refusal, by the refusal's gRPC code.
HTTP_STATUS = {
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "INVALID_ARGUMENT": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def http_status(error: LomasError) -> int:
    return HTTP_STATUS.get(error.code, 502)


def refusal_text(error: LomasError) -> str:
    """One line: the platform's message (which never carries data values), then the gRPC code
    and the reason, which the error table of the documentation explains."""
    message = error.message or "no details given"
    return f"{message[:1].upper()}{message[1:]} ({error.code} · {error.reason})"


class FormError(ValueError):
    """A form's fields cannot make a request (caught before anything is sent)."""
