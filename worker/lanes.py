"""Pausing lanes: an operator stops, and later restarts, the sending of one
project's commands (``grants lanes``), say while its backend is under
maintenance.

A lane is ``kind:project`` (worker/work.py ``Lane``). A paused lane is a field
of ``{p}:lanes:paused`` (worker/keys.py) holding who paused it, when and why;
the take script skips it, so its commands keep accumulating in its buffer
(nothing is lost, nothing is sent) and flow again once it is resumed. The
metrics export the same hash (``grants_lane_paused``).

Pausing also hands the lane's batches that were taken but never sent back to
its buffer (worker/lua/pause.lua), in one step with the pause. A call in
progress, and the retries of a call already made, go on: stopping them
would leave their outcome unknown. :meth:`Lanes.overview` counts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from schemas.kinds import KINDS
from worker.keys import Keys
from worker.ledger import register_script
from worker.results import iso_ms
from worker.work import Lane

# The pause script reads no retention; the prelude wants one in this shape.
_NO_RETENTION = "0:0:0:0"


@dataclass(frozen=True)
class Paused:
    """Why a lane is paused."""

    lane: str
    since_ms: int
    actor: str
    note: str

    def as_json(self) -> dict[str, Any]:
        return {"lane": self.lane, "since": iso_ms(self.since_ms), "actor": self.actor, "note": self.note}


@dataclass(frozen=True)
class LaneState:
    """One lane as ``grants lanes list`` shows it."""

    lane: str
    waiting: int  # commands in its buffer
    oldest_ms: int | None  # received time of the oldest of them
    batches: int  # batches taken and not finished (sending or backing off)
    paused: Paused | None


def lanes_of(project_id: int, kind: str | None = None) -> list[str]:
    """The lanes of a project: of one kind, or of every kind."""
    return [str(Lane(k, project_id)) for k in ([kind] if kind else KINDS)]


def parse_paused(lane: str, value: str) -> Paused:
    try:
        raw = json.loads(value)
    except ValueError:
        raw = {}
    return Paused(lane, int(raw.get("since") or 0), str(raw.get("actor") or ""), str(raw.get("note") or ""))


class Lanes:
    """Pause, resume and list lanes in the ledger."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    @cached_property
    def _pause(self) -> Any:
        return register_script(self.redis, "pause")

    def pause(self, lanes: list[str], *, actor: str, note: str = "") -> list[tuple[str, str, int]]:
        """Pause ``lanes``: (lane, 'paused' | 'already', batches handed back to its buffer) each.
        An already paused lane keeps who paused it first."""
        reply = self._pause(args=[self.keys.prefix, _NO_RETENTION, actor, note, *lanes])
        return [(lane, verdict, int(n)) for lane, verdict, n in reply]

    def resume(self, lanes: list[str]) -> list[tuple[str, bool]]:
        """Resume ``lanes``: (lane, whether it was paused) each. The next take
        sends its commands (within a flush interval)."""
        pipe = self.redis.pipeline(transaction=True)
        for lane in lanes:
            pipe.hdel(self.keys.paused_lanes, lane)
        return [(lane, bool(n)) for lane, n in zip(lanes, pipe.execute(), strict=True)]

    def paused(self, project_id: int | None = None) -> dict[str, Paused]:
        """The paused lanes (of one project), by lane."""
        found = {lane: parse_paused(lane, v) for lane, v in self.redis.hgetall(self.keys.paused_lanes).items()}
        return {lane: p for lane, p in sorted(found.items()) if project_id is None or lane.endswith(f":{project_id}")}

    def overview(self, project_id: int | None = None, kind: str | None = None) -> list[LaneState]:
        """Every lane that has commands waiting, batches in flight or a pause (of
        one project, of one kind), in lane order."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.keys.lanes, 0, -1, withscores=True)
        pipe.zrange(self.keys.leases, 0, -1)
        pipe.hgetall(self.keys.paused_lanes)
        waiting, leases, paused = pipe.execute()

        def wanted(lane: str) -> bool:
            k, _, pid = lane.rpartition(":")
            return (project_id is None or pid == str(project_id)) and (kind is None or k == kind)

        oldest = {lane: int(score) for lane, score in waiting if wanted(lane)}
        batches: dict[str, int] = {}
        for batch_id in leases:
            lane = str(Lane.of_batch(batch_id))
            if wanted(lane):
                batches[lane] = batches.get(lane, 0) + 1
        stopped = {lane: parse_paused(lane, v) for lane, v in paused.items() if wanted(lane)}
        names = sorted(set(oldest) | set(batches) | set(stopped))
        pipe = self.redis.pipeline(transaction=False)
        for lane in names:
            pipe.llen(self.keys.buffer(lane))
        lengths = pipe.execute()
        return [
            LaneState(lane, int(n), oldest.get(lane), batches.get(lane, 0), stopped.get(lane))
            for lane, n in zip(names, lengths, strict=True)
        ]
