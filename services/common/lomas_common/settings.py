"""Settings shared by every service, read from `LOMAS_`-prefixed environment variables in `main()`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(f"LOMAS_{name}", default)


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(f"LOMAS_{name}")
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"LOMAS_{name} must be an integer") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(f"LOMAS_{name}")
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"LOMAS_{name} must be a number") from None


def env_required(env: Mapping[str, str], name: str) -> str:
    value = env.get(f"LOMAS_{name}", "")
    if not value:
        raise SystemExit(f"LOMAS_{name} must be set")
    return value


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise SystemExit(f"LOMAS_{name} must be at least 1")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """How a service listens and reports."""

    listen: str  # host:port; port 0 picks a free port
    max_message_bytes: int
    grace_seconds: float
    otel_exporter: str  # none | console | otlp
    log_level: str
    service_token: str  # shared secret that mesh peers present (empty: no peer check)
    # Threads running calls on a blocking server (admin store, budget, executor): on 2 cores,
    # more than a few only contend for the GIL. Database pools get one connection per thread.
    threads: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, default_port: int) -> ServerSettings:
        env = os.environ if env is None else env
        return cls(
            listen=env_str(env, "LISTEN", f"127.0.0.1:{default_port}"),
            max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", 64 * 1024 * 1024),
            grace_seconds=env_float(env, "GRACE_SECONDS", 10.0),
            otel_exporter=env_str(env, "OTEL_EXPORTER", "none"),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            service_token=env_str(env, "SERVICE_TOKEN", ""),
            threads=_positive(env_int(env, "SERVER_THREADS", 8), "SERVER_THREADS"),
        )
