"""Anchoring: the head of every ledger's hash chain, MACed with a key the database does not hold and
written as checkpoints outside the ledger database.

The hash chain (`lomas_budget.journal`) is unkeyed: whoever can write to the database can rewrite a
chain from any entry on, recomputing every hash, and the chain still verifies. A checkpoint pins a
chain where it stood: (ledger id, user, dataset, entry count, head hash, time), with an HMAC-SHA256
under the anchor key, appended as one JSON line to the checkpoint file. The budget service writes
that file and the database never sees it; the operator ships it elsewhere (an object store with
retention, a log collector: each checkpoint is also logged). `VerifyLedgers` checks every ledger
against its latest checkpoint (`Anchors.check_ledger`): the stored entry at the checkpoint's count
must carry the checkpoint's head hash, and every entry up to it must hash as chained, so a
consistent rewrite of anything up to the checkpoint is caught; so are a truncated chain, a deleted
ledger, and a checkpoint that was altered or forged without the key (its MAC).

What anchoring cannot catch: a change, between two rounds, to entries after the latest checkpoint
(the next round anchors what it finds), and the loss of the newest lines of the file (hence: ship
them off the machine). A round never anchors a chain that no longer extends the ledger's previous
checkpoint, so a rewrite, once caught, stays reported.

The service runs a round (`LedgerAnchor.checkpoint`) on start-up, every
LOMAS_LEDGER_CHECKPOINT_INTERVAL_SECONDS and when it stops; a round appends one line per ledger whose
head moved since its latest checkpoint (or whose checkpoint was MACed with another key).

Keys (`AnchorKeys`): one per line of LOMAS_LEDGER_ANCHOR_KEY_FILE (or LOMAS_LEDGER_ANCHOR_KEY), at
least 32 characters each. The first MACs new checkpoints; all verify. To rotate, put the new key
first: the next round re-anchors every ledger with it, after which the old key can go. A checkpoint
names its key by `key_id`, a MAC of a constant (it reveals nothing of the key).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lomas_budget.model import stamp, utc_now
from lomas_budget.store import LedgerHead, LedgerSession, LedgerStore

log = logging.getLogger(__name__)

FORMAT = "lomas-ledger-checkpoint/v1"
MIN_KEY_CHARS = 32
# A ledger opened this long before a checkpoint round, yet in no checkpoint, was missed: the round
# reads its snapshot just after it takes its time, and a ledger's transaction commits within this.
MISSED_AFTER = timedelta(seconds=5)
_KEY_ID_INPUT = b"lomas-ledger-anchor-key-id"


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """The name a checkpoint gives its key: a MAC of a constant, which reveals nothing of the key."""
    return _mac(key, _KEY_ID_INPUT)[:16]


@dataclass(frozen=True)
class AnchorKeys:
    """The anchor keys: `signing` MACs new checkpoints; every key in `by_id` verifies."""

    signing: bytes
    by_id: Mapping[str, bytes]

    @classmethod
    def parse(cls, text: str) -> AnchorKeys:
        """Keys from text, one per line (blank lines ignored); the first signs."""
        keys = [line.strip().encode() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ValueError("no anchor key given")
        if any(len(key) < MIN_KEY_CHARS for key in keys):
            raise ValueError(f"every anchor key must have at least {MIN_KEY_CHARS} characters")
        return cls(keys[0], {key_id(key): key for key in keys})

    @property
    def signing_id(self) -> str:
        return key_id(self.signing)


@dataclass(frozen=True)
class Checkpoint:
    """Where one ledger's chain stood at `time`: `entry_count` entries, the last hashed `head_hash`."""

    ledger_id: str
    user: str
    dataset: str
    entry_count: int
    head_hash: str
    time: str
    key_id: str = ""
    mac: str = ""

    def _signed_text(self) -> bytes:
        """The canonical JSON text the MAC covers: every field but the MAC, and the format."""
        fields = {**asdict(self), "format": FORMAT}
        del fields["mac"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, keys: AnchorKeys) -> Checkpoint:
        unsigned = replace(self, key_id=keys.signing_id, mac="")
        return replace(unsigned, mac=_mac(keys.signing, unsigned._signed_text()))

    def authentic(self, key: bytes) -> bool:
        return hmac.compare_digest(self.mac, _mac(key, self._signed_text()))

    def line(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_line(cls, text: str) -> Checkpoint:
        """Parse one line (ValueError, KeyError or TypeError if it is not a checkpoint)."""
        value: Any = json.loads(text)
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise ValueError("not a checkpoint")
        checkpoint = cls(
            ledger_id=str(value["ledger_id"]),
            user=str(value["user"]),
            dataset=str(value["dataset"]),
            entry_count=int(value["entry_count"]),
            head_hash=str(value["head_hash"]),
            time=str(value["time"]),
            key_id=str(value["key_id"]),
            mac=str(value["mac"]),
        )
        if checkpoint.entry_count < 1:
            raise ValueError("a checkpoint pins at least one entry")
        return checkpoint


@dataclass(frozen=True)
class Anchors:
    """The checkpoint file as verification reads it: the latest authentic checkpoint of each ledger,
    the newest checkpoint time, and what is wrong with the file itself."""

    latest: dict[str, Checkpoint] = field(default_factory=dict)
    newest_time: str = ""
    problems: tuple[str, ...] = ()

    def check_ledger(
        self, row: Mapping[str, Any], entry_count: int, anchored_hash: str | None
    ) -> list[str]:
        """The problems of one stored ledger (`row`, its `entry_count` entries, the stored hash of
        its entry at the latest checkpoint's count) against its latest checkpoint."""
        ledger_id = row["id"]
        prefix = f"ledger {ledger_id}"
        checkpoint = self.latest.get(ledger_id)
        if checkpoint is None:
            return _missed(prefix, str(row["created_at"]), self.newest_time)
        when = f"its checkpoint of {checkpoint.time}"
        problems = []
        if (row["user_name"], row["dataset_name"]) != (checkpoint.user, checkpoint.dataset):
            problems.append(f"{prefix}: its user or dataset differs from {when}")
        if entry_count < checkpoint.entry_count:
            problems.append(
                f"{prefix}: {checkpoint.entry_count} entries at {when} but only {entry_count} "
                "stored (entries removed)"
            )
        elif anchored_hash != checkpoint.head_hash:
            problems.append(
                f"{prefix}: entry {checkpoint.entry_count} does not match {when} "
                "(history rewritten)"
            )
        return problems

    def missing(self, stored: set[str]) -> list[str]:
        """Checkpointed ledgers that are not among the `stored` ledger ids."""
        return [
            f"ledger {ledger_id} ({checkpoint.user}, {checkpoint.dataset}): in a checkpoint of "
            f"{checkpoint.time} but not in the database (ledger deleted)"
            for ledger_id, checkpoint in self.latest.items()
            if ledger_id not in stored
        ]


def _missed(prefix: str, created_at: str, newest_time: str) -> list[str]:
    """A ledger in no checkpoint is a problem only if a round after its opening should have seen it."""
    if not newest_time:
        return []
    try:
        late = datetime.fromisoformat(created_at) + MISSED_AFTER < datetime.fromisoformat(
            newest_time
        )
    except ValueError:
        return [f"{prefix}: unreadable creation time, and in no checkpoint"]
    if late:
        return [f"{prefix}: opened at {created_at} but in no checkpoint (newest {newest_time})"]
    return []


class CheckpointFile:
    """The checkpoint file: JSON lines, appended to (never rewritten), synced to disk per round."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Make the file if it does not exist, and end a line a crash cut short (the partial line
        stays, and reads as unreadable; the next round's lines start on lines of their own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
                _sync(file)

    def append(self, checkpoints: Iterable[Checkpoint]) -> None:
        text = "".join(f"{checkpoint.line()}\n" for checkpoint in checkpoints)
        if not text:
            return
        with self.path.open("ab") as file:
            file.write(text.encode())
            _sync(file)

    def read(self, keys: AnchorKeys) -> Anchors:
        """The latest authentic checkpoint of each ledger, and the lines that are not one: any
        line whose MAC does not verify, and a line of a key not configured unless a later
        authentic checkpoint of its ledger supersedes it (as after a key rotation)."""
        latest: dict[str, Checkpoint] = {}
        newest = ""
        problems = []
        unknown_keys: dict[str, str] = {}  # ledger id -> the problem of its newest such line
        name = f"checkpoint file {self.path}"
        try:
            handle = self.path.open(encoding="utf-8", errors="replace")
        except OSError as error:
            return Anchors(problems=(f"{name}: cannot be read ({error.strerror})",))
        with handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    checkpoint = Checkpoint.from_line(text)
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{name} line {number}: not a checkpoint")
                    continue
                key = keys.by_id.get(checkpoint.key_id)
                if key is None:
                    unknown_keys[checkpoint.ledger_id] = (
                        f"{name} line {number}: the latest checkpoint of ledger "
                        f"{checkpoint.ledger_id} names a key not configured "
                        f"({checkpoint.key_id}): forged, or the key is missing"
                    )
                    continue
                if not checkpoint.authentic(key):
                    problems.append(f"{name} line {number}: the MAC does not verify (altered)")
                    continue
                latest[checkpoint.ledger_id] = checkpoint
                newest = max(newest, checkpoint.time)
                unknown_keys.pop(checkpoint.ledger_id, None)
        return Anchors(latest, newest, (*problems, *unknown_keys.values()))


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())


class LedgerAnchor:
    """Checkpoints of the ledgers in one store, MACed with `keys`, in one checkpoint file."""

    def __init__(
        self,
        keys: AnchorKeys,
        checkpoints: CheckpointFile,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.keys = keys
        self.file = checkpoints
        self._clock = clock
        self._lock = threading.Lock()  # one round at a time (the timer's and the last one)
        self._anchored: dict[str, Checkpoint] | None = None  # read from the file at the first round
        self._diverged: set[str] = set()  # ledgers whose chain left their checkpoint (logged once)

    def anchors(self) -> Anchors:
        """What verification checks the ledgers against (read before its snapshot, so that no
        checkpoint is newer than what the snapshot shows)."""
        return self.file.read(self.keys)

    def checkpoint(self, store: LedgerStore) -> list[Checkpoint]:
        """One round: anchor every ledger whose head moved since its latest checkpoint, unless its
        chain no longer extends that checkpoint (then nothing is anchored: verification reports it).
        Returns the checkpoints written."""
        with self._lock:
            if self._anchored is None:
                self.file.create()
                self._anchored = dict(self.file.read(self.keys).latest)
            anchored = self._anchored
            now = stamp(self._clock())
            signing_id = self.keys.signing_id

            def moved(session: LedgerSession) -> list[LedgerHead]:
                found = []
                for head in session.ledger_heads():
                    last = anchored.get(head.ledger_id)
                    if last is not None and (
                        (last.entry_count, last.head_hash, last.key_id)
                        == (head.entry_count, head.head_hash, signing_id)
                    ):
                        continue
                    if last is not None and not _extends(session, head, last):
                        if head.ledger_id not in self._diverged:
                            self._diverged.add(head.ledger_id)
                            log.error(
                                "ledger %s no longer extends its checkpoint of %s: not anchored "
                                "(ledger verify reports it)",
                                head.ledger_id,
                                last.time,
                            )
                        continue
                    found.append(head)
                return found

            heads = store.run(moved, readonly=True)
            written = [
                Checkpoint(
                    head.ledger_id,
                    head.user,
                    head.dataset,
                    head.entry_count,
                    head.head_hash,
                    now,
                ).signed(self.keys)
                for head in heads
            ]
            self.file.append(written)
            for checkpoint in written:
                anchored[checkpoint.ledger_id] = checkpoint
                log.info("ledger checkpoint %s", checkpoint.line())
            return written


def _extends(session: LedgerSession, head: LedgerHead, last: Checkpoint) -> bool:
    """Whether a ledger's chain, as stored now, still holds its checkpointed entry unchanged."""
    if head.entry_count < last.entry_count:
        return False
    return session.entry_hash(head.ledger_id, last.entry_count) == last.head_hash


def checkpoint_until(
    stop: threading.Event, anchor: LedgerAnchor, store: LedgerStore, interval_seconds: float
) -> None:
    """Run a round now, then every `interval_seconds`, until `stop` is set (a failed round, the
    database down say, is logged and run again at the next tick)."""
    while True:
        try:
            anchor.checkpoint(store)
        except Exception:
            log.exception("ledger checkpoint round failed; retrying in %.0f s", interval_seconds)
        if stop.wait(interval_seconds):
            return


__all__ = [
    "AnchorKeys",
    "Anchors",
    "Checkpoint",
    "CheckpointFile",
    "LedgerAnchor",
    "checkpoint_until",
    "key_id",
]
