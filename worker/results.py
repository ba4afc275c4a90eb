"""The read side of the results store: one record per command, lists by status
and time, and the figures ops watch (counts, backlog, oldest waiting)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterator

import redis

from schemas.kinds import GRANT, KINDS, REVOKE
from schemas.records import Status
from worker.keys import RECORD_NAMESPACES, Keys, batch_lane, split_member

_INT_FIELDS = {"att": "attempts", "dup": "duplicates"}
_TIME_FIELDS = {
    "enq": "enqueued_at",
    "rcv": "received_at",
    "snt": "sent_at",
    "cpl": "completed_at",
}


def iso_ms(ms: str | int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (None for unset)."""
    if ms in (None, "", "0", 0):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def record_view(raw: dict[str, str], kind: str = "grant") -> dict[str, Any]:
    """The public JSON shape of a stored record hash."""
    view: dict[str, Any] = {
        "project_id": int(raw["pid"]),
        "external_purchase_id": raw["epid"],
        "status": raw.get("st"),
    }
    for field, name in _INT_FIELDS.items():
        view[name] = int(raw.get(field) or 0)
    for field, name in _TIME_FIELDS.items():
        view[name] = iso_ms(raw.get(field))
    view["batch_id"] = raw.get("bat") or None
    view["response"] = json.loads(raw["res"]) if raw.get("res") else None
    view["error"] = raw.get("err") or None
    if kind == "revoke":
        view["kind"] = "revoke"
        view["request"] = json.loads(raw["rq"]) if raw.get("rq") else None
    elif kind != "grant":
        view["kind"] = kind
        view["operation_id"] = view.pop("external_purchase_id")
        view["command"] = json.loads(raw["cmd"]) if raw.get("cmd") else None
    else:
        cmd = json.loads(raw["cmd"]) if raw.get("cmd") else {}
        view["command"] = {"kind": cmd.get("kind"), "operation": cmd.get("operation")}
    view["history"] = [
        {**h, "at": iso_ms(h.get("at"))} for h in (json.loads(raw["hist"]) if raw.get("hist") else [])
    ]
    return view


def conflict_view(raw: dict[str, str]) -> dict[str, Any]:
    cmd = json.loads(raw["cmd"]) if raw.get("cmd") else {}
    return {
        "project_id": int(raw["pid"]),
        "external_purchase_id": raw["epid"],
        "status": Status.conflict.value,
        "count": int(raw.get("n") or 0),
        "last_seen_at": iso_ms(raw.get("at")),
        "error": raw.get("err"),
        "command": {"kind": cmd.get("kind"), "operation": cmd.get("operation")},
    }


def _received_within(view: dict[str, Any], since_ms: int | None, until_ms: int | None) -> bool:
    received = view.get("received_at")
    if received is None:
        return True
    ms = int(datetime.fromisoformat(received).timestamp() * 1000)
    return (since_ms is None or ms >= since_ms) and (until_ms is None or ms <= until_ms)


def dead_view(raw: dict[str, str]) -> dict[str, Any]:
    return {
        "id": raw["id"],
        "project_id": None,
        "external_purchase_id": raw.get("epid") or None,
        "status": Status.dead.value,
        "reason": raw.get("reason"),
        "received_at": iso_ms(raw.get("at")),
        "source": raw.get("src"),
        "raw": raw.get("raw"),
        "raw_size": int(raw.get("size") or 0),
        "raw_truncated": raw.get("truncated") == "1",
    }


class Results:
    """Queries over the results store."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def get(self, project_id: int, purchase_id: str, kind: str = "grant") -> dict[str, Any] | None:
        """A purchase's record, with its revoke and any conflicting repeats; None if unknown.

        For the kinds keyed by an operation id, ``purchase_id`` is that id.
        """
        if kind != "grant":
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.keys.record(project_id, purchase_id, kind))
            pipe.hgetall(self.keys.conflict(project_id, purchase_id, kind))
            raw, conflict = pipe.execute()
            if not raw:
                return None
            view = self._view(raw, kind)
            if conflict:
                view["conflicts"] = conflict_view(conflict)
            return view
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.record(project_id, purchase_id))
        pipe.hgetall(self.keys.conflict(project_id, purchase_id))
        pipe.hgetall(self.keys.record(project_id, purchase_id, "revoke"))
        raw, conflict, revoke = pipe.execute()
        if not raw and not conflict and not revoke:
            return None
        view = self._view(raw, "grant") if raw else {
            "project_id": project_id, "external_purchase_id": purchase_id, "status": None,
        }
        if conflict:
            view["conflicts"] = conflict_view(conflict)
        if revoke:
            view["revoke"] = self._view(revoke, "revoke")
        return view

    def _view(self, raw: dict[str, str], kind: str) -> dict[str, Any]:
        view = record_view(raw, kind)
        if raw.get("st") == Status.sending.value and raw.get("bat"):
            # Waiting out a backoff: the batch holds the last error.
            view["error"] = self.redis.hget(self.keys.batch(raw["bat"]), "err") or view["error"]
        return view

    def list(
        self,
        status: Status,
        *,
        kind: str = "grant",
        project_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Records of ``kind`` in ``status``, oldest first, entered within [since, until]."""
        if status in (Status.pending, Status.sending):
            wanted = [w for w in self._in_flight(status, kind) if project_id is None or w[0] == project_id]
            pipe = self.redis.pipeline(transaction=False)
            for pid, epid in wanted:
                pipe.hgetall(self.keys.record(pid, epid, kind))
            views = [record_view(raw, kind) for raw in pipe.execute() if raw]
            return [v for v in views if _received_within(v, since_ms, until_ms)][:limit]
        out = []
        for view in self.iter(status, kind=kind, project_id=project_id, since_ms=since_ms, until_ms=until_ms,
                              page=max(limit, 100)):
            out.append(view)
            if len(out) >= limit:
                break
        return out

    def iter(
        self,
        status: Status,
        *,
        kind: str = "grant",
        project_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every indexed record in ``status`` (oldest first), a page at a time."""
        lo = since_ms if since_ms is not None else "-inf"
        hi = until_ms if until_ms is not None else "+inf"
        offset = 0
        while True:
            members = self.redis.zrangebyscore(self.keys.index(status.value, kind), lo, hi, start=offset, num=page)
            if not members:
                return
            offset += len(members)
            pipe = self.redis.pipeline(transaction=False)
            if status is Status.dead:
                view = dead_view
                for letter_id in members:
                    pipe.hgetall(self.keys.dead_letter(letter_id))
            else:
                wanted = [split_member(m) for m in members]
                if project_id is not None:
                    wanted = [w for w in wanted if w[0] == project_id]
                if status is Status.conflict:
                    view = conflict_view
                    for pid, epid in wanted:
                        pipe.hgetall(self.keys.conflict(pid, epid, kind))
                else:
                    def view(raw, kind=kind):
                        return record_view(raw, kind)
                    for pid, epid in wanted:
                        pipe.hgetall(self.keys.record(pid, epid, kind))
            for raw in pipe.execute():
                if raw:
                    yield view(raw)

    def _in_flight(self, status: Status, kind: str) -> list[tuple[int, str]]:
        """(project, id) of commands of ``kind`` waiting (pending) or in begun batches (sending)."""
        found: list[tuple[int, str]] = []
        batches = [b for b in self.redis.zrange(self.keys.leases, 0, -1) if batch_lane(b)[1] == kind]
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in batches:
            pipe.hmget(self.keys.batch(batch_id), "members", "begun")
        for batch_id, (members, begun) in zip(batches, pipe.execute()):
            if members and (begun == "1") == (status is Status.sending):
                found += [(batch_lane(batch_id)[0], m) for m in json.loads(members)]
        if status is Status.pending:
            for lane in self.redis.zrange(self.keys.lanes, 0, -1):
                lane_kind, _, pid = lane.partition(":")
                if lane_kind == kind:
                    found += [(int(pid), m) for m in self.redis.lrange(self.keys.buffer(lane), 0, -1)]
        return found

    def stats(self) -> dict[str, Any]:
        """Counts by status (grants, and revokes apart), backlog, oldest waiting, batches in flight.

        Outcomes are counted off their indexes; 'pending' and 'sending' are
        read off the buffers and the batches in flight (bounded by
        GRANTS_MAX_INFLIGHT_BATCHES), which is where those commands are.
        """
        kinds = {name: k.statuses for name, k in KINDS.items()}
        indexed = [(k, s) for k, statuses in kinds.items() for s in statuses
                   if s not in (Status.pending, Status.sending)]
        pipe = self.redis.pipeline(transaction=False)
        for kind, s in indexed:
            pipe.zcard(self.keys.index(s.value, kind))
        pipe.zrange(self.keys.lanes, 0, -1, withscores=True)
        pipe.zrange(self.keys.leases, 0, -1)
        pipe.time()
        *counts, lanes, leases, (sec, usec) = pipe.execute()
        now_ms = sec * 1000 + usec // 1000
        pipe = self.redis.pipeline(transaction=False)
        for lane, _ in lanes:
            pipe.llen(self.keys.buffer(lane))
        for batch_id in leases:
            pipe.hmget(self.keys.batch(batch_id), "n", "begun")
        replies = pipe.execute()
        by: dict[str, dict[str, int]] = {k: {} for k in kinds}
        for (kind, s), n in zip(indexed, counts):
            by[kind][s.value] = n
        for kind in by:
            by[kind]["pending"] = sum(n for (lane, _), n in zip(lanes, replies) if lane.partition(":")[0] == kind)
            by[kind]["sending"] = 0
        for batch_id, (n, begun) in zip(leases, replies[len(lanes):]):
            kind = batch_lane(batch_id)[1]
            if kind in by:
                by[kind]["sending" if begun == "1" else "pending"] += int(n or 0)
        grants = {s.value: by[GRANT][s.value] for s in KINDS[GRANT].statuses}
        revokes = {s.value: by[REVOKE][s.value] for s in KINDS[REVOKE].statuses}
        oldest = min((score for _, score in lanes), default=None)
        operations = {k: {s.value: by[k][s.value] for s in KINDS[k].statuses} for k in KINDS if k not in (GRANT, REVOKE)}
        return {
            "counts": grants,
            "revokes": revokes,
            "operations": operations,
            "backlog": sum(by[k]["pending"] + by[k]["sending"] for k in kinds),
            "waiting": sum(by[k]["pending"] for k in kinds),
            "oldest_waiting_age_s": round((now_ms - oldest) / 1000, 3) if oldest is not None else 0.0,
            "batches_in_flight": len(leases),
        }

    def timings(self, members: list[tuple[int, str]]) -> list[tuple[int, int, int]]:
        """(enqueued, received, completed) ms of each purchase, for latency figures."""
        pipe = self.redis.pipeline(transaction=False)
        for pid, epid in members:
            pipe.hmget(self.keys.record(pid, epid), "enq", "rcv", "cpl")
        return [tuple(int(x or 0) for x in row) for row in pipe.execute()]

    def trim(self, retention_ms: int) -> int:
        """Drop index entries older than the retention (their records expired)."""
        (sec, _usec) = self.redis.time()
        cutoff = sec * 1000 - retention_ms
        pipe = self.redis.pipeline(transaction=False)
        for kind in RECORD_NAMESPACES:
            for s in Status:
                pipe.zremrangebyscore(self.keys.index(s.value, kind), "-inf", cutoff)
        return sum(pipe.execute())
