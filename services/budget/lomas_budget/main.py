"""Run the budget ledger: `lomas-budget` (configured by LOMAS_ environment variables).

Settings (besides the server's `LOMAS_LISTEN`, `LOMAS_SERVICE_TOKEN`, ...):

* `LOMAS_DATABASE_URL`: `sqlite:///path.db` or `postgresql://...` (required);
* `LOMAS_RESERVATION_TTL_SECONDS`: how long a reservation lives before the sweep settles it
  (default 900 s: longer than a task can wait for redelivery, 2 x 300 s + 60 s);
* `LOMAS_SWEEP_INTERVAL_SECONDS`: how often the service sweeps expired reservations (default 30 s;
  it also sweeps once on start-up, so a restart resumes where a crash left off);
* `LOMAS_REQUEST_RETENTION_SECONDS`: how long the first answer to a request id is kept for replays
  (default 7 days; the sweep forgets older ones);
* `LOMAS_LEDGER_ANCHOR_KEY_FILE` (or `LOMAS_LEDGER_ANCHOR_KEY`, the keys themselves): the keys that
  MAC the ledgers' checkpoints, one per line, at least 32 characters, the first signing (see
  `lomas_budget.anchoring`); never in the database. Set with `LOMAS_LEDGER_CHECKPOINT_FILE`;
* `LOMAS_LEDGER_CHECKPOINT_FILE`: where the checkpoints are appended (JSON lines; ship the file off
  the machine); both unset: no checkpoints, and a warning at start-up;
* `LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS`: how often ledgers whose chain moved are checkpointed
  (default 10 s; also on start-up and on shutdown).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lomas.budget.v1 import budget_pb2_grpc
from lomas_budget.anchoring import AnchorKeys, CheckpointFile, LedgerAnchor, checkpoint_until
from lomas_budget.api import BudgetServicer
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import (
    DEFAULT_REQUEST_RETENTION_SECONDS,
    DEFAULT_RESERVATION_TTL_SECONDS,
    MAX_RESERVATION_TTL_SECONDS,
)
from lomas_budget.store import LedgerStore
from lomas_common.blocking_server import (
    BlockingServer,
    serve_blocking_until_signalled,
    start_blocking_server,
)
from lomas_common.db import Database
from lomas_common.server import Service, configure_logging
from lomas_common.settings import ServerSettings, env_float, env_int, env_required, env_str

log = logging.getLogger(__name__)

DEFAULT_PORT = 50053
DEFAULT_SWEEP_INTERVAL_SECONDS = 30.0
DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class AnchorSettings:
    """Where the ledgers' checkpoints go and the keys that MAC them (`lomas_budget.anchoring`)."""

    keys: AnchorKeys
    checkpoint_file: Path
    interval_seconds: float = DEFAULT_CHECKPOINT_INTERVAL_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AnchorSettings | None:
        key_file = env_str(env, "LEDGER_ANCHOR_KEY_FILE", "")
        key_text = env_str(env, "LEDGER_ANCHOR_KEY", "")
        checkpoint_file = env_str(env, "LEDGER_CHECKPOINT_FILE", "")
        if not (key_file or key_text or checkpoint_file):
            return None
        if not checkpoint_file or not (key_file or key_text):
            raise SystemExit(
                "LOMAS_LEDGER_CHECKPOINT_FILE and LOMAS_LEDGER_ANCHOR_KEY_FILE (or "
                "LOMAS_LEDGER_ANCHOR_KEY) go together"
            )
        if key_file and key_text:
            raise SystemExit(
                "set LOMAS_LEDGER_ANCHOR_KEY_FILE or LOMAS_LEDGER_ANCHOR_KEY, not both"
            )
        if key_file:
            try:
                key_text = Path(key_file).read_text()
            except OSError as error:
                raise SystemExit(
                    f"LOMAS_LEDGER_ANCHOR_KEY_FILE cannot be read: {error.strerror}"
                ) from None
        try:
            keys = AnchorKeys.parse(key_text)
        except ValueError as error:
            raise SystemExit(f"ledger anchor key: {error}") from None
        interval = env_float(
            env, "LEDGER_CHECKPOINT_INTERVAL_SECONDS", DEFAULT_CHECKPOINT_INTERVAL_SECONDS
        )
        if interval <= 0:
            raise SystemExit("LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS must be positive")
        return cls(keys, Path(checkpoint_file), interval)


@dataclass(frozen=True)
class BudgetSettings:
    server: ServerSettings
    database_url: str
    reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    request_retention_seconds: int = DEFAULT_REQUEST_RETENTION_SECONDS
    anchor: AnchorSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BudgetSettings:
        env = os.environ if env is None else env
        settings = cls(
            server=ServerSettings.from_env(env, default_port=DEFAULT_PORT),
            database_url=env_required(env, "DATABASE_URL"),
            reservation_ttl_seconds=env_int(
                env, "RESERVATION_TTL_SECONDS", DEFAULT_RESERVATION_TTL_SECONDS
            ),
            sweep_interval_seconds=env_float(
                env, "SWEEP_INTERVAL_SECONDS", DEFAULT_SWEEP_INTERVAL_SECONDS
            ),
            request_retention_seconds=env_int(
                env, "REQUEST_RETENTION_SECONDS", DEFAULT_REQUEST_RETENTION_SECONDS
            ),
            anchor=AnchorSettings.from_env(env),
        )
        if not 0 < settings.reservation_ttl_seconds <= MAX_RESERVATION_TTL_SECONDS:
            raise SystemExit(
                f"LOMAS_RESERVATION_TTL_SECONDS must be between 1 and {MAX_RESERVATION_TTL_SECONDS}"
            )
        if settings.sweep_interval_seconds <= 0:
            raise SystemExit("LOMAS_SWEEP_INTERVAL_SECONDS must be positive")
        if settings.request_retention_seconds <= settings.reservation_ttl_seconds:
            raise SystemExit(
                "LOMAS_REQUEST_RETENTION_SECONDS must exceed LOMAS_RESERVATION_TTL_SECONDS"
            )
        return settings


def sweep_until(stop: threading.Event, ledger: BudgetLedger, interval_seconds: float) -> None:
    """Sweep now, then every `interval_seconds`, until `stop` is set (a failed sweep is logged and
    retried at the next tick: the state it works on is all in the database)."""
    while True:
        try:
            report = ledger.sweep()
            if report.released or report.committed:
                log.info(
                    "sweep released %d and committed %d expired reservations",
                    len(report.released),
                    len(report.committed),
                )
        except Exception:
            log.exception("reservation sweep failed; retrying in %.0f s", interval_seconds)
        if stop.wait(interval_seconds):
            return


@dataclass
class BudgetService:
    """A started budget service: the server, its database, its sweeper and its checkpointer."""

    server: BlockingServer
    db: Database
    ledger: BudgetLedger
    background: list[threading.Thread]
    stop_background: threading.Event

    def close(self) -> None:
        self.stop_background.set()
        for thread in self.background:
            thread.join()
        try:
            # The last round: what the drained server wrote is anchored before the process ends.
            self.ledger.checkpoint()
        except Exception:
            log.exception("the last ledger checkpoint round failed")
        self.db.close()


def start(settings: BudgetSettings) -> BudgetService:
    db = Database.from_url(settings.database_url, max_connections=settings.server.threads)
    store = LedgerStore(db)
    store.create_schema(reservation_ttl_seconds=settings.reservation_ttl_seconds)
    anchor = None
    if settings.anchor is None:
        log.warning(
            "ledger checkpoints are off (LOMAS_LEDGER_CHECKPOINT_FILE unset): a consistent rewrite "
            "of a ledger's chain in the database would go unnoticed"
        )
    else:
        anchor = LedgerAnchor(settings.anchor.keys, CheckpointFile(settings.anchor.checkpoint_file))
    ledger = BudgetLedger(
        store,
        reservation_ttl_seconds=settings.reservation_ttl_seconds,
        request_retention_seconds=settings.request_retention_seconds,
        anchor=anchor,
    )
    server = start_blocking_server(
        settings.server,
        [
            Service(
                budget_pb2_grpc.add_BudgetServiceServicer_to_server,
                BudgetServicer(ledger),
                "lomas.budget.v1.BudgetService",
            )
        ],
        threads=settings.server.threads,
    )
    stop = threading.Event()
    background = [
        threading.Thread(
            target=sweep_until,
            args=(stop, ledger, settings.sweep_interval_seconds),
            name="sweeper",
            daemon=True,
        )
    ]
    if anchor is not None and settings.anchor is not None:
        background.append(
            threading.Thread(
                target=checkpoint_until,
                args=(stop, anchor, store, settings.anchor.interval_seconds),
                name="checkpointer",
                daemon=True,
            )
        )
    for thread in background:
        thread.start()
    return BudgetService(server, db, ledger, background, stop)


def main() -> None:
    settings = BudgetSettings.from_env()
    configure_logging(settings.server.log_level)
    service = start(settings)
    serve_blocking_until_signalled(service.server, on_stop=[service.close])


if __name__ == "__main__":
    main()
