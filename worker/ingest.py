"""Ingestion: the command stream, read in order, claimed exactly once.

One loop per ``celery worker`` (a thread in its main process, started by
:class:`IngestStep`); a Redis lock lets one of them read at a time, and the
ledger's compare-and-set on the stream position makes each command
ingested once and in publish order even if two ever race:

    XREAD from the position  ->  judge each entry in Python (a command, or a
    dead letter with its raw fields)  ->  ledger.ingest: claims, buffers,
    dead letters and the new position in one Lua script  ->  take the
    batches that are ready now and hand them to send tasks

Measured on a 2-core machine: about 8 µs of Redis and 25 µs of Python per
command, so one loop ingests far more than the backends take; capacity
scales in the sending, not here. A worker killed between the read and the
claim leaves the position where it was: the next holder reads the range
again. Commands an older version left on its Celery ingest queue are
drained first, oldest first, each message once (:meth:`Ingestor.drain_legacy`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from typing import Any

import orjson
import structlog
from celery import bootsteps
from pydantic import ValidationError
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError

from schemas.commands import parse_command
from schemas.jsontext import loads_exact, split_array
from schemas.stream import COMMAND_FIELD, LEGACY_INGEST_QUEUE, entry_time_ms
from worker.ledger import Moved
from worker.locks import Lock
from worker.logs import Throttle
from worker.work import Arrival, Refused

log = structlog.get_logger("grants.ingest")


def not_transient(exc: BaseException) -> bool:
    """A failure of the claim that trying again will not cure: a value the
    encoder refuses, or an error raised inside a script. A lost connection,
    a replica refusing writes during a failover, Redis out of memory or
    loading its AOF are waited out instead: nothing is dropped for them."""
    if isinstance(exc, (ValueError, TypeError)):
        return True
    if isinstance(exc, (OutOfMemoryError, ReadOnlyError, BusyLoadingError)):
        return False  # raised inside a script too ("... on @user_script")
    return isinstance(exc, ResponseError) and "user_script" in str(exc)


# Entries read per round: one Lua call claims them all. 500 keeps a call
# (which blocks Redis) around 4 ms while amortising the round trips.
READ_COUNT = 500
# How long one XREAD waits for new entries: short enough to renew the lock
# and notice a shutdown, long enough to cost nothing when idle.
BLOCK_MS = 100
# The ingestion lock outlives this many missed rounds; a dead holder is
# replaced within it.
LOCK_TTL_MS = 2_000
# How often a worker that does not hold the lock tries to take it.
STANDBY_POLL_S = 0.25
# How often the old Celery ingest queue is looked at (an LLEN): during a
# rolling upgrade old producers may still publish there.
LEGACY_CHECK_S = 1.0
# A summary of what was ingested is logged this often (never one line per
# command on the hot path: duplicates, conflicts and dead letters are).
SUMMARY_S = 10.0


def brief(exc: Exception) -> str:
    """A validation error in one line per problem: 'field: reason; ...'."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def purchase_id_of(message: Any) -> str:
    """Best effort, for a dead letter's record: the purchase or operation id."""
    if not isinstance(message, dict):
        return ""
    epid: Any = message.get("operation_id") or message.get("external_purchase_id")
    if epid is None:
        try:
            epid = message["operation"]["purchase"]["external_purchase_id"]
        except (KeyError, TypeError, IndexError):
            return ""
    return epid if isinstance(epid, str) else ""


def as_json(value: Any) -> str:
    """Any decoded value as JSON text for a dead letter (huge integers too)."""
    try:
        return orjson.dumps(value, default=repr).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library keeps it
        return json.dumps(value, default=repr)


def text_of(raw: bytes) -> str:
    """Bytes as text for a dead letter: invalid UTF-8 kept visible as \\x escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def judge(message: Any, source: str, raw: str, enqueued_at: int | None) -> Arrival | Refused:
    """One decoded message: a valid command, or what to keep of it as a dead letter."""
    try:
        if isinstance(message, ValueError):
            raise ValueError(f"not JSON: {message}")
        command, stamped = parse_command(message)
        return Arrival(command, stamped or enqueued_at, source)
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        return Refused(source, raw, brief(exc), purchase_id_of(message))


def judge_entry(entry_id: str, fields: dict[bytes, bytes]) -> Arrival | Refused:
    """One stream entry, as any producer in any language may have written it."""
    value = fields.get(COMMAND_FIELD.encode())
    if value is None or len(fields) != 1:
        raw = orjson.dumps({text_of(k): text_of(v) for k, v in fields.items()}).decode()
        return Refused(entry_id, raw, f"an entry holds one field, {COMMAND_FIELD!r}, with the command's JSON")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Refused(entry_id, text_of(value), f"not UTF-8 text: {exc}")
    try:
        message: Any = loads_exact(text)
    except ValueError as exc:
        message = exc
    return judge(message, entry_id, text, entry_time_ms(entry_id))


def legacy_chunk(raw: bytes) -> tuple[list[tuple[Any, str]], str | None]:
    """The command messages inside one kombu message of the old ingest task.

    Returns ((decoded or ValueError, raw text) per element, None) or ([], why
    the message holds no chunk). Each element is judged alone later.
    """
    try:
        envelope = loads_exact(raw)
        body = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            import base64

            body = base64.b64decode(body).decode("utf-8")
        task = (envelope.get("headers") or {}).get("task")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [], f"undecodable message on the old ingest queue: {type(exc).__name__}: {exc}"
    if task != "grants.ingest":
        return [], f"unknown task on the old ingest queue: {task!r}"
    try:
        args, kwargs, _embed = loads_exact(body)
        if len(args) != 1 or kwargs:
            raise ValueError(f"{len(args)} arguments, {len(kwargs)} keyword arguments")
        chunk = args[0]
    except (ValueError, TypeError) as exc:
        return [], f"grants.ingest takes one argument, a chunk of commands: {type(exc).__name__}: {exc}"
    if isinstance(chunk, list):
        return [(m, as_json(m)) for m in chunk], None
    if not isinstance(chunk, str):
        return [], "grants.ingest takes one argument, a chunk of commands: not a list or JSON text"
    elements: list[tuple[Any, str]] = []
    try:
        for _offset, piece in split_array(chunk):
            try:
                elements.append((loads_exact(piece), piece.strip()))
            except ValueError as exc:
                elements.append((exc, piece.strip()))
    except ValueError as exc:
        if not elements:
            return [], f"the chunk is not JSON, or not an array of commands: {exc}"
    return elements, None


class Ingestor:
    """The ingestion loop of one worker."""

    def __init__(self, runtime: Any):
        self.rt = runtime
        self.stream = runtime.keys.commands
        self.lock = Lock(runtime.redis, runtime.keys.ingest_lock, LOCK_TTL_MS)
        # A client returning bytes: an entry may hold anything, invalid UTF-8 included.
        self.raw = runtime.redis_bytes
        self.position: str | None = None  # None: not read yet
        self.stopping = threading.Event()
        # Monotonic times of the last round completed (0: none yet, not
        # ready), and of the last round tried (health: worker/monitor.py).
        self.last_round = -math.inf
        self.alive_at = time.monotonic()
        self._legacy_due = 0.0
        self._counts: Counter = Counter()
        self._summary_at = time.monotonic()
        self._throttle = Throttle()

    def run(self) -> None:
        """Rounds until stopped; Redis outages are logged (once per interval) and waited out."""
        failures = 0
        while not self.stopping.is_set():
            self.alive_at = time.monotonic()
            try:
                self.round()
                self.last_round = time.monotonic()  # read and ingested, or nothing to read
                failures = 0
            except Exception as exc:  # keep the loop alive whatever one round hit
                failures += 1
                self.position = None  # read it again: our view may be stale
                if self._throttle(f"round:{type(exc).__name__}"):
                    log.warning("ingest round failed", error=str(exc), failures=failures)
                self.stopping.wait(min(2.0, 0.05 * failures))
        try:
            self.lock.release()
        except Exception:  # shutting down anyway
            pass

    def round(self) -> int:
        """Ingest what is there (waiting up to BLOCK_MS); returns commands ingested."""
        if not self.lock.hold():
            self.position = None
            self.stopping.wait(STANDBY_POLL_S)
            return 0
        now = time.monotonic()
        if now >= self._legacy_due:
            if self.drain_legacy():
                return 0  # and look again at once: an old queue is drained in one go
            self._legacy_due = now + LEGACY_CHECK_S
        if self.position is None:
            self.position = self.rt.redis.get(self.rt.keys.ingest_position) or ""
        reply = self.raw.xread({self.stream: self.position or "0-0"}, count=READ_COUNT, block=BLOCK_MS)
        if not reply:
            self._summarise()
            return 0
        entries = [(entry_id.decode(), fields) for entry_id, fields in reply[0][1]]
        judged = [judge_entry(entry_id, fields) for entry_id, fields in entries]
        last = entries[-1][0]
        try:
            done = self._ingest(judged, ("stream", self.position, last))
        except Moved as moved:
            self.position = moved.position
            return 0
        except Exception as exc:
            if not not_transient(exc):
                raise
            # Something in this range makes the claim fail (a defect, or what
            # slipped past the checks): go entry by entry, so that only the
            # culprit becomes a dead letter and ingestion never stalls on it.
            return self._one_by_one(entries, judged)
        self.position = last
        return done

    def _one_by_one(self, entries: list[tuple[str, dict[bytes, bytes]]], judged: list[Arrival | Refused]) -> int:
        done = 0
        for (entry_id, fields), item in zip(entries, judged, strict=True):
            guard = ("stream", self.position or "", entry_id)
            try:
                done += self._ingest([item], guard)
            except Moved as moved:
                self.position = moved.position
                return done
            except Exception as exc:
                if not not_transient(exc):
                    raise
                raw = as_json({text_of(k): text_of(v) for k, v in fields.items()})
                log.error("entry could not be ingested: dead letter", entry=entry_id, error=str(exc)[:300])
                self._ingest([Refused(entry_id, raw, f"could not be ingested: {type(exc).__name__}: {exc}")], guard)
            self.position = entry_id
        return done

    def _ingest(self, judged: list[Arrival | Refused], guard: tuple[str, str, str | bytes]) -> int:
        arrivals = [j for j in judged if isinstance(j, Arrival)]
        refused = [j for j in judged if isinstance(j, Refused)]
        results = self.rt.ledger.ingest(arrivals, refused, guard=guard)
        for r in refused:
            log.error(
                "command refused: dead letter",
                dead_letter=r.source,
                external_purchase_id=r.record_id or None,
                reason=r.reason[:300],
            )
        for r in results:
            if r.result in ("dup", "conflict"):
                (log.warning if r.result == "conflict" else log.info)(
                    "command " + ("duplicate" if r.result == "dup" else "conflict: rejected, original kept"),
                    kind=r.command.kind,
                    project_id=r.command.project_id,
                    external_purchase_id=r.command.external_purchase_id,
                )
        self._counts.update(r.result for r in results)
        self._counts["dead"] += len(refused)
        self.rt.ingested(results, refused)
        if arrivals:
            self.rt.take_eagerly()
        self._summarise()
        return len(results)

    def drain_legacy(self) -> bool:
        """Ingest the oldest message of the old Celery ingest queue, if any.

        kombu pushes on the left and pops on the right, so the right end is
        the oldest. The message is ingested, and popped, only if it is still
        the oldest when the ledger runs (another worker may have taken it).
        Returns True if there was one.
        """
        raw = self.raw.lindex(LEGACY_INGEST_QUEUE, -1)
        if raw is None:
            return False
        elements, problem = legacy_chunk(raw)
        source = "legacy:" + hashlib.blake2b(raw, digest_size=8).hexdigest()
        if problem is not None:
            judged: list[Arrival | Refused] = [Refused(source, text_of(raw), problem)]
        else:
            judged = [judge(message, f"{source}:{i}", text, None) for i, (message, text) in enumerate(elements)]
        guard = ("list", LEGACY_INGEST_QUEUE, raw)
        try:
            count = self._ingest(judged, guard)
        except Moved:
            return True
        except Exception as exc:
            if not not_transient(exc):
                raise
            self._ingest([Refused(source, text_of(raw), f"could not be ingested: {type(exc).__name__}: {exc}")], guard)
            return True
        log.info(
            "old ingest message drained",
            source=source,
            commands=count,
            dead=sum(isinstance(j, Refused) for j in judged),
        )
        return True

    def _summarise(self) -> None:
        now = time.monotonic()
        if now - self._summary_at < SUMMARY_S:
            return
        if self._counts:
            log.info("commands ingested", seconds=round(now - self._summary_at, 1), **self._counts)
        self._counts.clear()
        self._summary_at = now


class IngestStep(bootsteps.StartStopStep):
    """Runs the ingestion loop inside ``celery worker`` (the main process)."""

    requires = {"celery.worker.components:Pool"}  # noqa: RUF012 (Celery's bootstep API)

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.ingestor: Ingestor | None = None
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        self.ingestor = Ingestor(worker.app.grants_runtime())
        worker.app.grants_ingestor = self.ingestor
        self.thread = threading.Thread(target=self.ingestor.run, name="grants-ingest", daemon=True)
        self.thread.start()
        log.info("ingestion started", stream=self.ingestor.stream)

    def stop(self, worker: Any) -> None:
        if self.ingestor is not None:
            self.ingestor.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
