"""``grants results``: look up outcomes (get, list, stats)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TypedDict

import redis
from redis.exceptions import RedisError

from ops.args import cut, kind_name, positive_int, redis_client, showing, statuses, table, when
from schemas.kinds import GRANT, KINDS
from schemas.records import Status
from schemas.stream import LEGACY_INGEST_QUEUE
from worker.keys import Keys
from worker.results import DEAD_LETTERS, Results
from worker.settings import Settings, connect
from worker.tasks import OPS_QUEUE, SEND_QUEUE

# A reason in a list is cut to this many characters (… marks it; the footer
# says how to read it whole).
REASON_WIDTH = 60


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "results",
        help="look up outcomes in the results store",
        description="Read the results store: one record per command.",
    )
    rsub = p.add_subparsers(dest="results_command", required=True, metavar="ACTION")

    g = rsub.add_parser("get", help="print one purchase's record (with its revoke) as JSON, whole")
    g.add_argument(
        "external_purchase_id",
        metavar="EXTERNAL_PURCHASE_ID",
        help="the purchase id (or, with --kind, the operation id)",
    )
    g.add_argument("--project-id", type=int, required=True)
    g.add_argument(
        "--kind",
        default=GRANT,
        type=kind_name,
        metavar="KIND",
        help=f"{', '.join(KINDS)}: grant (default) is shown with its revoke; the others are keyed by operation id",
    )
    g.add_argument("--json", action="store_true", help="(the record is always printed as JSON)")
    g.set_defaults(run=run_get)

    ls = rsub.add_parser("list", help="list records in one or more statuses, oldest first")
    ls.add_argument(
        "--status",
        required=True,
        action="extend",
        type=statuses(Status),
        metavar="STATUS",
        help=f"{', '.join(s.value for s in Status)}; repeat it or give a comma list for several",
    )
    ls.add_argument(
        "--kind",
        default=GRANT,
        type=kind_name,
        metavar="KIND",
        help=f"which commands: {', '.join(KINDS)} (default grant)",
    )
    ls.add_argument("--project-id", type=int)
    ls.add_argument("--since", type=when, help="ISO 8601 time (entered the status at or after)")
    ls.add_argument("--until", type=when, help="ISO 8601 time (entered the status at or before)")
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many (default 100)")
    ls.add_argument("--wide", action="store_true", help="reasons whole, never cut")
    ls.add_argument("--json", action="store_true", help="print a JSON array (records whole)")
    ls.set_defaults(run=run_list)

    st = rsub.add_parser("stats", help="counts by kind and status, backlog, oldest waiting, rates")
    st.add_argument("--project-id", type=int, help="only this project's commands")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(run=run_stats)


def _results(settings: Settings) -> Results:
    return Results(redis_client(settings), Keys(settings.key_prefix))


def run_get(args: argparse.Namespace, settings: Settings) -> int:
    record = _results(settings).get(args.project_id, args.external_purchase_id, args.kind)
    if record is None:
        what = "purchase" if KINDS[args.kind].identity == "external_purchase_id" else f"{args.kind} operation"
        print(f"no record of {what} {args.external_purchase_id!r} in project {args.project_id}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def _when(r: dict[str, Any]) -> str:
    return r.get("completed_at") or r.get("received_at") or r.get("last_seen_at") or ""


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    results = _results(settings)
    wanted = list(dict.fromkeys(args.status))  # in order, once each
    found: list[dict[str, Any]] = []
    total: int | None = 0
    for status in wanted:
        found += results.in_status(
            status,
            kind=args.kind,
            project_id=args.project_id,
            since_ms=args.since,
            until_ms=args.until,
            limit=args.limit,
        )
        n = results.count(status, kind=args.kind, project_id=args.project_id, since_ms=args.since, until_ms=args.until)
        total = None if n is None or total is None else total + n
    # Several statuses: one list, oldest first, cut to the limit.
    records = sorted(found, key=_when)[: args.limit] if len(wanted) > 1 else found
    if total is not None:
        total = max(total, len(records))
    noun = f"{args.kind} records ({', '.join(s.value for s in wanted)})"
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        print(showing(len(records), total, noun), file=sys.stderr)
        return 0
    identity = "ID" if Status.dead in wanted else KINDS[args.kind].identity.upper()
    rows: list[tuple] = []
    first_cut: dict[str, Any] | None = None
    for r in records:
        reason = r.get("error") or r.get("reason") or ""
        shown, was_cut = (reason, False) if args.wide else cut(reason, REASON_WIDTH)
        if was_cut and first_cut is None:
            first_cut = r
        rows.append(
            (
                "" if r.get("project_id") is None else r["project_id"],
                r.get("external_purchase_id") or r.get("operation_id") or r.get("id") or "",
                r["status"],
                r.get("attempts", ""),
                r.get("splits", ""),
                _when(r),
                shown,
            )
        )
    for line in table(("PROJECT", identity, "STATUS", "ATTEMPTS", "SPLITS", "WHEN", "REASON"), rows, right={0, 3, 4}):
        print(line)
    print(showing(len(records), total, noun), file=sys.stderr)
    if first_cut is not None:
        if first_cut.get("status") == Status.dead.value:
            whole = f"grants dead show {first_cut.get('id')}"
        else:
            name = first_cut.get("external_purchase_id") or first_cut.get("operation_id")
            whole = f"grants results get {name} --project-id {first_cut.get('project_id')}"
            whole += "" if args.kind == GRANT else f" --kind {args.kind}"
        print(
            f"reasons cut to {REASON_WIDTH} characters (…): see one whole with `{whole}`, all with --wide or --json",
            file=sys.stderr,
        )
    return 0


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    results = _results(settings)
    stats = results.stats(args.project_id)
    stats["redis_memory"] = redis_memory(results.redis)
    # The broker is the same Redis (its sentinels too) unless GRANTS_BROKER_URL says otherwise.
    try:
        broker = results.redis if settings.broker_url is None else connect(settings.broker_url, patient=False)
        stats["queued_messages"] = {q: broker.llen(q) for q in (SEND_QUEUE, OPS_QUEUE, LEGACY_INGEST_QUEUE)}
    except (RedisError, ValueError):
        stats["queued_messages"] = None  # a non-Redis broker
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for line in stats_lines(stats):
        print(line)
    return 0


def stats_lines(stats: dict[str, Any]) -> list[str]:
    """The plain-text stats: a table of statuses by kind, then one line per figure."""
    by_kind = {GRANT: stats["counts"], "revoke": stats["revokes"], **stats["operations"]}
    order: list[str] = []
    for kind in KINDS.values():
        order += [s.value for s in kind.statuses if s.value not in order]
    one_project = stats.get("project_id") is not None
    rows = []
    for status in order:
        # (A dead letter belongs to no project.)
        applies = [status in by_kind[k] and not (one_project and status == Status.dead.value) for k in KINDS]
        cells = [f"{by_kind[k][status]:,}" if ok else "-" for k, ok in zip(KINDS, applies, strict=True)]
        rows.append((status, *cells))
    scope = f"project {stats['project_id']}" if stats.get("project_id") is not None else "all projects"
    out = [f"commands by status ({scope}; granted and revoked: ever, the others: now)"]
    out += table(("STATUS", *KINDS), rows, right=set(range(1, len(KINDS) + 1)))
    oldest = stats["oldest_waiting_age_s"]
    lane = f" ({stats['oldest_waiting_lane']})" if stats.get("oldest_waiting_lane") else ""
    out.append("")
    age = f"oldest waiting {oldest:,.1f} s{lane}" if stats["backlog"] else "nothing waiting"
    out.append(f"backlog: {stats['backlog']:,} not finished ({stats['waiting']:,} waiting to be sent); {age}")
    out.append(
        f"batches in flight: {stats['batches_in_flight']:,} ({stats.get('batches_backing_off', 0):,} backing off)"
    )
    rates = stats.get("per_minute") or {}
    if rates:
        parts = [
            f"dead letters {n:,.0f}" if kind == DEAD_LETTERS else f"{kind} {status} {n:,.0f}"
            for kind, per in sorted(rates.items())
            for status, n in sorted(per.items())
        ]
        out.append(f"outcomes per minute (last minute): {', '.join(parts)}")
    else:
        out.append("outcomes per minute (last minute): none")
    paused = stats.get("paused_lanes") or []
    if paused:
        # Lanes paused together (a project's every kind) on one line.
        together: dict[tuple[str, str, str], list[str]] = {}
        for p in paused:
            together.setdefault((p["since"] or "", p["actor"] or "", p["note"] or ""), []).append(p["lane"])
        for (since, actor, note), names in together.items():
            out.append(f"paused: {', '.join(names)} since {since} by {actor}" + (f": {note}" if note else ""))
    else:
        out.append("paused lanes: none")
    queued = stats.get("queued_messages")
    if queued is not None:
        out.append("broker messages: " + ", ".join(f"{q} {n:,}" for q, n in queued.items()))
    memory = stats["redis_memory"]
    limit = f"{memory['limit_bytes'] / 2**20:,.1f} MiB" if memory["limit_bytes"] else "no limit"
    share = f" ({memory['used_bytes'] / memory['limit_bytes']:.0%})" if memory["limit_bytes"] else ""
    out.append(
        f"redis memory: {memory['used_bytes'] / 2**20:,.1f} MiB used of {limit}{share}, policy {memory['policy']}"
    )
    return out


class RedisMemory(TypedDict):
    """What :func:`redis_memory` reads off ``INFO memory``."""

    used_bytes: int
    limit_bytes: int  # 0: no limit
    policy: str


def redis_memory(client: redis.Redis) -> RedisMemory:
    """Redis's memory in use, its limit (0: none) and its eviction policy."""
    info = client.info("memory")
    return {
        "used_bytes": int(info.get("used_memory", 0)),
        "limit_bytes": int(info.get("maxmemory", 0)),
        "policy": info.get("maxmemory_policy", "unknown"),
    }
