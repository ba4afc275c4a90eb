"""Resolve: record what an operator found about in_doubt commands.

An in_doubt command was sent and its answer lost; only a look at the
player's inventory (``grants inventory``) can tell whether it applied. The
operator's finding becomes its outcome:

- ``granted`` (the kind's applied status: ``revoked`` for revokes and
  deletes) closes it, with the refund data a later revoke needs in its claim
  (PlayFab: the instances the inventory shows annotated with the purchase;
  Xsolla: the user and items of the purchase), so a refund revokes it as it
  would any grant;
- ``failed`` says it certainly did not apply: ``grants replay --status
  failed`` may then send it again.

Planning happens here, in Python (reading the record, and for PlayFab the
inventory); the decision that counts is taken again atomically by the
ledger's resolve script (worker/lua/resolve.lua): only a command still
in_doubt is resolved, so one replayed, resolved by someone else or answered
late in the meantime is left alone. Each resolution is written into the
record's history (who, when, the note) and counted
(``grants_resolutions_total``).

:func:`resolve` is the one orchestration; ``grants resolve`` and the
``grants.resolve`` task (:func:`resolve_task`) both call it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import orjson
import structlog

from schemas.commands import MODELS, GrantCommand, from_stored
from schemas.kinds import GRANT, KINDS
from schemas.playfab import GetUserInventoryResult
from schemas.records import Status, parse_record
from worker import errors
from worker.backends.playfab import PlayFab, item_grants, playfab_extras
from worker.backends.registry import Backends
from worker.ledger import Ledger, register_script
from worker.replay import Filters, select
from worker.results import Results
from worker.sender import MAX_HOLD_FACTOR, SEND_LEASE_MARGIN_S
from worker.work import Lane

log = structlog.get_logger("grants.resolve")

RESOLVE = "grants.resolve"
# How recover.lua words the in_doubt of a batch whose lease ran out during its
# call: only then may the call's own answer still come (its sender stalled,
# not dead) and settle it.
LEASE_LOST = "expired during the backend call"
# What an operator may find: applied, or certainly not applied.
FINDINGS = ("granted", "failed")

# Targets per ledger call: one Lua call blocks Redis, so keep each short.
RESOLVE_CHUNK = 500


def written_status(kind: str, finding: str) -> str:
    """The status a finding writes for ``kind`` ('granted' is the kind's applied status)."""
    if finding not in FINDINGS:
        raise ValueError(f"a finding is one of {', '.join(FINDINGS)}, not {finding!r}")
    return KINDS[kind].applied.value if finding == "granted" else Status.failed.value


@dataclass(frozen=True)
class Planned:
    """One target and what resolve will do with it, and why."""

    project_id: int
    record_id: str
    resolve: bool
    why: str
    # What the resolve script writes with it (only when ``resolve``).
    refund: str = ""
    slim: str = ""
    answer: str = ""
    # When the in_doubt being resolved was written: the script resolves only
    # that one (not one a forced replay made since the plan was read).
    doubted_at: int = 0

    @property
    def name(self) -> str:
        return f"{self.project_id}/{self.record_id}"


@dataclass
class Summary:
    """What a resolve chose, refused and did."""

    finding: str
    planned: list[Planned]
    verdicts: Counter = field(default_factory=Counter)
    done: bool = False

    @property
    def refused(self) -> list[Planned]:
        return [p for p in self.planned if not p.resolve]

    def as_dict(self) -> dict[str, Any]:
        """The summary as the Celery task returns it (Flower shows it)."""
        out: dict[str, Any] = {
            "as": self.finding,
            "candidates": len(self.planned),
            "plan": [f"{'resolve' if p.resolve else 'skip'} {p.name}: {p.why}" for p in self.planned[:50]],
        }
        if self.done:
            out["verdicts"] = dict(self.verdicts)
        return out


class Resolver:
    """Plans and writes resolutions (the ledger's resolve script)."""

    def __init__(self, ledger: Ledger, results: Results, backends: Backends):
        self.ledger = ledger
        self.results = results
        self.backends = backends
        # A call's answer may still land this long after its batch was
        # given up for lost (the longest a sender holds its lease): a
        # finding of 'failed' before then could be contradicted by it.
        self.late_answer_ms = int((MAX_HOLD_FACTOR * backends.settings.http_call_budget_s + SEND_LEASE_MARGIN_S) * 1000)

    @cached_property
    def _script(self) -> Any:
        return register_script(self.ledger.redis, "resolve")

    # --- planning -----------------------------------------------------------

    def _stored(self, kind: str, project_id: int, record_id: str) -> tuple[dict[str, Any], Any, Any] | None:
        raw = self.ledger.redis.get(self.ledger.keys.record(project_id, record_id, kind))
        return parse_record(raw) if raw else None

    def plan_one(
        self,
        project_id: int,
        record_id: str,
        *,
        kind: str,
        finding: str,
        read: dict[tuple[int, str], GetUserInventoryResult] | None = None,
    ) -> Planned:
        """What resolving this command would write; raises worker.errors when
        the backend must be read (PlayFab) and cannot be. ``read``: the
        inventories read so far in this plan, by (project, user)."""
        read = {} if read is None else read
        stored = self._stored(kind, project_id, record_id)
        if stored is None:
            return Planned(project_id, record_id, False, "no such record (or past its retention): nothing changed")
        header, body, answer = stored
        status = header.get("st")
        if status != Status.in_doubt.value:
            return Planned(
                project_id,
                record_id,
                False,
                f"it is {status}, not in_doubt: nothing changed (only an in_doubt command is resolved)",
            )
        doubted_at = int(header.get("cpl") or 0)
        too_soon = self._too_soon(project_id, record_id, header)
        if too_soon is not None:
            return too_soon
        command = MODELS[kind].model_validate(from_stored(kind, project_id, record_id, body))
        backend = self.backends.for_lane(Lane(kind, project_id))
        playfab = backend if isinstance(backend, PlayFab) and isinstance(command, GrantCommand) else None
        character = isinstance(command, GrantCommand) and bool(playfab_extras(command).get("CharacterId"))
        if finding == "failed":
            readable = (playfab, command) if playfab and isinstance(command, GrantCommand) and not character else None
            return replace(self._plan_failed(project_id, record_id, readable, read), doubted_at=doubted_at)
        if playfab is not None and isinstance(command, GrantCommand):
            return replace(
                self._plan_playfab_granted(project_id, record_id, playfab, command, character, read),
                doubted_at=doubted_at,
            )
        return replace(
            self._planned_granted(project_id, record_id, kind, backend, command, answer, ""), doubted_at=doubted_at
        )

    def _plan_playfab_granted(
        self,
        project_id: int,
        record_id: str,
        backend: PlayFab,
        command: GrantCommand,
        character: bool,
        read: dict[tuple[int, str], GetUserInventoryResult],
    ) -> Planned:
        """PlayFab: 'granted' only with the evidence, the instances our grant
        annotated, which are what a revoke takes back (read now, so the refund
        data is the truth)."""
        instances = self._instances(backend, project_id, command.user_id, record_id, read)
        if not instances:
            where = (
                "a character's items are not in that read: check the character's inventory in Game Manager"
                if character
                else "if it did not apply, resolve --as failed"
            )
            return Planned(
                project_id,
                record_id,
                False,
                f"PlayFab shows no item instance annotated {record_id!r} in {command.user_id}'s inventory: "
                f"nothing a revoke could take back. Nothing changed; {where}",
            )
        evidence = f" ({len(instances)} of {len(item_grants(command))} item instances seen in PlayFab)"
        answer = {"ItemGrantResults": instances, "resolved": True}
        return self._planned_granted(project_id, record_id, GRANT, backend, command, answer, evidence)

    def _planned_granted(
        self, project_id: int, record_id: str, kind: str, backend: Any, command: Any, answer: Any, evidence: str
    ) -> Planned:
        """'granted', with the refund data a later revoke needs (and, with
        ``evidence``, the answer that proves it)."""
        applied = KINDS[kind].applied.value
        refund = backend.refund_data(kind, command, answer)
        slim = (
            command.stored(refund) if refund and isinstance(command, GrantCommand) and self.ledger.slim_records else ""
        )
        return Planned(
            project_id,
            record_id,
            True,
            f"in_doubt -> {applied}{evidence}" + ("; revocable" if refund else ""),
            refund=orjson.dumps(refund).decode() if refund else "",
            slim=slim,
            answer=orjson.dumps(answer).decode() if evidence else "",
        )

    def _too_soon(self, project_id: int, record_id: str, header: dict[str, Any]) -> Planned | None:
        """Refused while the call's own answer may still land: after the
        sweeper gave up a batch whose lease ran out mid-call, its sender may
        only be stalled. A finding then could be contradicted by the answer
        (which would be ignored): 'failed' and a replay may grant twice,
        'granted' would send a refund for items never granted."""
        if LEASE_LOST not in (header.get("err") or ""):
            return None
        sec, usec = self.ledger.redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        wait_ms = int(header.get("cpl") or 0) + self.late_answer_ms - now_ms
        if wait_ms <= 0:
            return None
        return Planned(
            project_id,
            record_id,
            False,
            f"in doubt for less than {self.late_answer_ms // 1000} s: its call's answer may still land. "
            f"Nothing changed; try again in {wait_ms // 1000 + 1} s",
        )

    def _plan_failed(
        self,
        project_id: int,
        record_id: str,
        readable: tuple[PlayFab, GrantCommand] | None,
        read: dict[tuple[int, str], GetUserInventoryResult],
    ) -> Planned:
        """'failed' makes a command replayable: refused (PlayFab) while the
        inventory shows it applied."""
        if readable:
            backend, command = readable
            seen = self._instances(backend, project_id, command.user_id, record_id, read)
            if seen:
                return Planned(
                    project_id,
                    record_id,
                    False,
                    f"PlayFab shows {len(seen)} item instance(s) annotated {record_id!r} in {command.user_id}'s "
                    "inventory: it applied. Nothing changed; resolve --as granted",
                )
        why = "not in PlayFab's inventory read" if readable else "on the operator's word"
        return Planned(project_id, record_id, True, f"in_doubt -> failed ({why}; then safe to replay)")

    def _instances(
        self,
        backend: PlayFab,
        project_id: int,
        user: str,
        record_id: str,
        read: dict[tuple[int, str], GetUserInventoryResult],
    ) -> list[dict[str, Any]]:
        """The user's instances annotated ``record_id``; one inventory read
        per user and project within a plan (a bulk resolve of one player's
        purchases reads once)."""
        key = (project_id, user)
        if key not in read:
            read[key] = backend.get_user_inventory(user)
        return backend.purchase_instances(user, record_id, read[key])

    def plan(self, targets: Iterable[tuple[int, str]], *, kind: str, finding: str) -> list[Planned]:
        """What resolving each target would do (one inventory read per player)."""
        read: dict[tuple[int, str], GetUserInventoryResult] = {}
        return [self.plan_one(pid, rid, kind=kind, finding=finding, read=read) for pid, rid in targets]

    # --- writing ------------------------------------------------------------

    def write(self, planned: list[Planned], *, kind: str, finding: str, actor: str, note: str) -> list[str]:
        """Resolve the planned commands in the ledger; one code per command:
        resolved, missing, or the status it has now (then unchanged)."""
        if not planned:
            return []
        args: list[Any] = [self.ledger.keys.prefix, self.ledger.retention, actor, written_status(kind, finding)]
        args += [kind, self.ledger.scrub(note)]
        for p in planned:
            args += [p.project_id, p.record_id, p.refund, p.slim, p.answer, p.doubted_at]
        return list(self._script(args=args))


def select_in_doubt(results: Results, filters: Filters) -> list[tuple[int, str]]:
    """(project, id) of the in_doubt records matching replay's filters."""
    if filters.status is not Status.in_doubt:
        raise ValueError("resolve selects in_doubt commands only")
    return [(int(r["project_id"]), r.get(KINDS[filters.kind].identity) or "") for r in select(results, filters)]


def resolve(
    resolver: Resolver,
    targets: Iterable[tuple[int, str]],
    *,
    finding: str,
    kind: str,
    actor: str,
    note: str = "",
    dry_run: bool = False,
    on_planned: Callable[[Summary], None] | None = None,
) -> Summary:
    """Plan and (unless a dry run) write the resolutions.

    Raises worker.errors.BackendError when a backend read it needs fails
    (nothing written then).
    """
    written_status(kind, finding)  # a bad finding is refused before anything
    if not actor:
        raise ValueError("a resolution names who made it (actor)")
    planned = resolver.plan(targets, kind=kind, finding=finding)
    summary = Summary(finding, planned)
    if on_planned:
        on_planned(summary)
    if dry_run:
        return summary
    todo = [p for p in planned if p.resolve]
    verdicts: Counter = Counter(skipped=len(planned) - len(todo))
    for start in range(0, len(todo), RESOLVE_CHUNK):
        chunk = todo[start : start + RESOLVE_CHUNK]
        verdicts.update(resolver.write(chunk, kind=kind, finding=finding, actor=actor, note=note))
    summary.verdicts, summary.done = verdicts, True
    if verdicts["resolved"]:
        log.warning(
            "in_doubt resolved", actor=actor, kind=kind, as_status=written_status(kind, finding), **dict(verdicts)
        )
    return summary


def resolve_task(
    task: Any,
    as_status: str,
    actor: str,
    purchase_ids: list[str] | None = None,
    project_id: int | None = None,
    kind: str = GRANT,
    note: str = "",
    since: str | None = None,
    until: str | None = None,
    sku: str | None = None,
    user: str | None = None,
    limit: int = 1000,
    dry_run: bool = False,
) -> dict[str, Any]:
    """``grants resolve`` as a task (e.g. from Flower's task API); returns a summary.

    Either ``purchase_ids`` (record ids) of ``project_id``, or replay's
    filters over the in_doubt commands of ``kind``.
    """
    from worker.replay import parse_time

    rt = task.app.grants_runtime()
    if purchase_ids:
        if project_id is None:
            raise ValueError("purchase_ids need their project_id")
        targets = [(int(project_id), str(p)) for p in purchase_ids]
    else:
        targets = select_in_doubt(
            rt.results,
            Filters(
                Status.in_doubt,
                kind=kind,
                project_id=project_id,
                since_ms=None if since is None else parse_time(since),
                until_ms=None if until is None else parse_time(until),
                sku=sku,
                user=user,
                limit=limit,
            ),
        )
    try:
        summary = resolve(
            Resolver(rt.ledger, rt.results, rt.backends),
            targets,
            finding=as_status,
            kind=kind,
            actor=actor,
            note=note,
            dry_run=dry_run,
        )
    except errors.BackendError as exc:
        raise RuntimeError(f"reading the backend failed, nothing resolved: {exc}") from None
    return summary.as_dict()


__all__ = [
    "FINDINGS",
    "RESOLVE",
    "Planned",
    "Resolver",
    "Summary",
    "resolve",
    "resolve_task",
    "select_in_doubt",
    "written_status",
]
