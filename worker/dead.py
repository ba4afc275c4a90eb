"""Dead letters: stream entries and broker messages that were not valid
commands, kept with their raw payload and the reason (``{p}:dead:{id}``,
indexed by time in ``{p}:idx:dead``; worker/keys.py). Written by ingestion
(worker/lua/ingest.lua) and by the consumer (worker/ledger.py
``dead_letter``); read and purged here (``grants dead``).

Purging removes a letter's hash and its index entry in one step
(worker/lua/dead_purge.lua). The count of dead letters ever recorded
(``{p}:totals`` field ``dead``, grants_dead_letters_total) is history and
stays.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

import redis

from schemas.records import Status
from worker.keys import Keys
from worker.ledger import register_script
from worker.results import dead_view

# Letters per purge call: one script call blocks Redis, so keep each short.
PURGE_CHUNK = 500
_NO_RETENTION = "0:0:0:0"


class DeadLetters:
    """List, read and purge dead letters."""

    def __init__(self, client: redis.Redis, keys: Keys, *, retention_ms: int):
        self.redis = client
        self.keys = keys
        # A letter is kept this long (GRANTS_RESULT_RETENTION_DAYS); its
        # index entry may outlive it until the sweeper trims the index.
        self.retention_ms = retention_ms

    @property
    def index(self) -> str:
        return self.keys.index(Status.dead.value)

    def count(self) -> int:
        """Dead letters still kept: index entries within the retention, not
        those whose letter expired (the sweeper trims the index later)."""
        sec, usec = self.redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return int(self.redis.zcount(self.index, now_ms - self.retention_ms, "+inf"))

    def iter(self, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every dead letter still kept, oldest first (a letter past its
        retention is gone though its index entry may remain: skipped)."""
        offset = 0
        while True:
            ids = self.redis.zrange(self.index, offset, offset + page - 1)
            if not ids:
                return
            offset += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for letter_id in ids:
                pipe.hgetall(self.keys.dead_letter(letter_id))
            yield from (dead_view(raw) for raw in pipe.execute() if raw)

    def get(self, letter_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.dead_letter(letter_id))
        return dead_view(raw) if raw else None

    @cached_property
    def _purge(self) -> Any:
        return register_script(self.redis, "dead_purge")

    def purge(self, letter_ids: list[str]) -> list[bool]:
        """Remove these letters (hash and index entry together): whether each was there."""
        found: list[bool] = []
        for i in range(0, len(letter_ids), PURGE_CHUNK):
            chunk = letter_ids[i : i + PURGE_CHUNK]
            found += [bool(n) for n in self._purge(args=[self.keys.prefix, _NO_RETENTION, *chunk])]
        return found

    def purge_all(self) -> int:
        """Remove every dead letter; returns how many were still kept (an
        index entry whose letter had expired goes too, uncounted)."""
        removed = 0
        while True:
            ids = self.redis.zrange(self.index, 0, PURGE_CHUNK - 1)
            if not ids:
                return removed
            removed += sum(self.purge(ids))
