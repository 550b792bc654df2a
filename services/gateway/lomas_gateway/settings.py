"""Gateway settings, from `LOMAS_` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lomas_common.peers import PeerSettings
from lomas_common.queue import QueueSettings
from lomas_common.settings import ServerSettings, env_float, env_int, env_required, env_str

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerSettings
    peers: PeerSettings
    queue: QueueSettings
    admin_target: str
    budget_target: str
    executor_target: str
    jwks: str  # path of a JWKS file, or its URL
    issuer: str
    audience: str
    query_timeout_seconds: float
    max_dummy_rows: int
    max_query_chars: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        server = ServerSettings.from_env(env, default_port=DEFAULT_PORT)
        return cls(
            server=server,
            peers=PeerSettings(
                service_token=server.service_token,
                max_message_bytes=server.max_message_bytes,
                otel_exporter=server.otel_exporter,
            ),
            queue=QueueSettings(
                broker_url=env_required(env, "REDIS_URL"),
                prefix=env_str(env, "QUEUE_PREFIX", "lomas"),
                task_time_limit_seconds=env_int(env, "TASK_TIME_LIMIT_SECONDS", 300),
            ),
            admin_target=env_required(env, "ADMIN_TARGET"),
            budget_target=env_required(env, "BUDGET_TARGET"),
            executor_target=env_required(env, "EXECUTOR_TARGET"),
            jwks=env_required(env, "JWKS"),
            issuer=env_required(env, "JWT_ISSUER"),
            audience=env_str(env, "JWT_AUDIENCE", "lomas"),
            query_timeout_seconds=env_float(env, "QUERY_TIMEOUT_SECONDS", 330.0),
            max_dummy_rows=env_int(env, "MAX_DUMMY_ROWS", 1_000_000),
            max_query_chars=env_int(env, "MAX_QUERY_CHARS", 100_000),
        )
