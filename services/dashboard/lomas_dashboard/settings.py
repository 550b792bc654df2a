"""The dashboard's settings: command-line options, with `LOMAS_` environment variables as defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DashboardSettings:
    target: str  # the gateway, host:port
    listen_host: str
    listen_port: int
    # Send the session cookie over HTTPS only (set it when a TLS proxy serves the dashboard).
    secure_cookie: bool = False


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> DashboardSettings:
    parser = argparse.ArgumentParser(
        prog="lomas-dashboard",
        description="The Lomas mesh web dashboard: administrators manage users, datasets, grants "
        "and caps; researchers see their datasets, budgets and queries. It calls the gateway with "
        "the token its user signs in with.",
    )
    parser.add_argument(
        "--target",
        default=environ.get("LOMAS_TARGET", "127.0.0.1:50051"),
        help="the gateway, HOST:PORT (default: $LOMAS_TARGET or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--listen",
        type=_host_port,
        default=environ.get("LOMAS_DASHBOARD_LISTEN", "127.0.0.1:8080"),
        help="where to serve the pages, HOST:PORT (default: $LOMAS_DASHBOARD_LISTEN or "
        "127.0.0.1:8080; port 0 picks a free one)",
    )
    parser.add_argument(
        "--secure-cookie",
        action="store_true",
        help="mark the session cookie Secure (when users reach the dashboard over HTTPS)",
    )
    args = parser.parse_args(argv)
    # argparse applies `type` to string defaults too, so `listen` is always a pair here.
    host, port = args.listen
    return DashboardSettings(
        target=args.target, listen_host=host, listen_port=port, secure_cookie=args.secure_cookie
    )
