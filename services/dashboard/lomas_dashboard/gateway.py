"""The dashboard's only way to the platform: the project's own clients, with the signed-in user's
token. Every page is one or more gateway calls, checked by the gateway like any other client's."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lomas.client import AccessDenied, Client
from lomas.client.admin import AdminClient

ADMIN = "admin"
RESEARCHER = "researcher"


@dataclass(frozen=True)
class Gateway:
    target: str

    @contextmanager
    def admin(self, token: str) -> Iterator[AdminClient]:
        with AdminClient(self.target, token=token) as client:
            yield client

    @contextmanager
    def researcher(self, token: str, dataset: str) -> Iterator[Client]:
        with Client(self.target, token=token, dataset=dataset) as client:
            yield client

    def accessible_datasets(self, token: str) -> list[str]:
        """The datasets the token's user holds a grant on. The client is bound to one dataset but
        this call names none, so any name serves to open it."""
        with self.researcher(token, dataset="-") as client:
            return client.list_datasets()

    def role_of(self, token: str) -> str:
        """ADMIN when the gateway accepts an admin call with the token, else RESEARCHER (when it
        accepts a researcher call). Raises the platform's refusal otherwise (an invalid token, an
        unknown user). Only chooses which pages to offer: every page's calls are checked anyway."""
        try:
            with self.admin(token) as admin:
                admin.list_users()
            return ADMIN
        except AccessDenied:
            self.accessible_datasets(token)
            return RESEARCHER


def subject_of(token: str) -> str:
    """The `sub` claim of a JWT, to greet its user. Read without checking the signature, which is
    the gateway's job: the dashboard only shows it after the gateway has accepted the token."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return ""
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) else ""
