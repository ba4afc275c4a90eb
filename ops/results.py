"""``grants results``: look up outcomes (get, list, stats)."""

from __future__ import annotations

import json
import sys

from redis.exceptions import RedisError

from ops.args import kind_name, positive_int, when
from schemas.kinds import KINDS
from schemas.records import Status
from schemas.stream import LEGACY_INGEST_QUEUE
from worker.keys import Keys
from worker.results import Results
from worker.settings import connect
from worker.tasks import OPS_QUEUE, SEND_QUEUE


def add_parser(sub) -> None:
    p = sub.add_parser(
        "results",
        help="look up outcomes in the results store",
        description="Read the results store: one record per command.",
    )
    rsub = p.add_subparsers(dest="results_command", required=True, metavar="ACTION")

    g = rsub.add_parser("get", help="print one purchase's record (with its revoke) as JSON")
    g.add_argument(
        "external_purchase_id",
        metavar="EXTERNAL_PURCHASE_ID",
        help="the purchase id (or, with --kind, the operation id)",
    )
    g.add_argument("--project-id", type=int, required=True)
    g.add_argument(
        "--kind",
        default="grant",
        type=kind_name,
        metavar="KIND",
        help="grant (default: shown with its revoke), or a kind keyed by operation id",
    )
    g.set_defaults(run=run_get)

    ls = rsub.add_parser("list", help="list records in a status, oldest first")
    ls.add_argument("--status", required=True, choices=[s.value for s in Status])
    ls.add_argument(
        "--kind",
        default="grant",
        type=kind_name,
        metavar="KIND",
        help=f"which commands: {', '.join(KINDS)} (default grant)",
    )
    ls.add_argument("--project-id", type=int)
    ls.add_argument("--since", type=when, help="ISO 8601 time (entered the status at or after)")
    ls.add_argument("--until", type=when, help="ISO 8601 time (entered the status at or before)")
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(run=run_list)

    st = rsub.add_parser("stats", help="counts by status, backlog, oldest waiting command")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(run=run_stats)


def _results(settings) -> Results:
    return Results(settings.redis_client(patient=False), Keys(settings.key_prefix))


def _guard(fn):
    def wrapped(args, settings):
        try:
            return fn(args, settings)
        except RedisError as exc:
            print(f"grants results: cannot reach the results store: {exc}", file=sys.stderr)
            return 2

    return wrapped


@_guard
def run_get(args, settings) -> int:
    record = _results(settings).get(args.project_id, args.external_purchase_id, args.kind)
    if record is None:
        print(f"no record of purchase {args.external_purchase_id!r} in project {args.project_id}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


@_guard
def run_list(args, settings) -> int:
    records = _results(settings).in_status(
        Status(args.status),
        kind=args.kind,
        project_id=args.project_id,
        since_ms=args.since,
        until_ms=args.until,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    print(f"{'PROJECT':>10}  {'EXTERNAL_PURCHASE_ID':<28} {'STATUS':<9} {'ATT':>3}  {'WHEN':<24} ERROR")
    for r in records:
        when = r.get("completed_at") or r.get("received_at") or r.get("last_seen_at") or ""
        error = (r.get("error") or "")[:80]
        print(
            f"{r['project_id'] or '':>10}  {r.get('external_purchase_id') or r.get('operation_id') or r.get('id'):<28} {r['status']:<9} "
            f"{r.get('attempts', 0):>3}  {when:<24} {error}"
        )
    print(f"({len(records)} records)", file=sys.stderr)
    return 0


@_guard
def run_stats(args, settings) -> int:
    results = _results(settings)
    stats = results.stats()
    stats["redis_memory"] = redis_memory(results.redis)
    # The broker is the same Redis (its sentinels too) unless GRANTS_BROKER_URL says otherwise.
    broker = results.redis if settings.broker_url is None else connect(settings.broker_url, patient=False)
    try:
        stats["queued_messages"] = {q: broker.llen(q) for q in (SEND_QUEUE, OPS_QUEUE, LEGACY_INGEST_QUEUE)}
    except RedisError:
        stats["queued_messages"] = None  # a non-Redis broker
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for status, n in stats["counts"].items():
        print(f"{status:>10}: {n:,}")
    print(f"   backlog: {stats['backlog']:,} (waiting {stats['waiting']:,}, oldest {stats['oldest_waiting_age_s']} s)")
    print(f"   batches in flight: {stats['batches_in_flight']}")
    if stats["queued_messages"] is not None:
        print(f"   broker messages: {stats['queued_messages']}")
    memory = stats["redis_memory"]
    limit = f"{memory['limit_bytes'] / 2**20:,.1f} MiB" if memory["limit_bytes"] else "no limit"
    share = f" ({memory['used_bytes'] / memory['limit_bytes']:.0%})" if memory["limit_bytes"] else ""
    print(f"   redis memory: {memory['used_bytes'] / 2**20:,.1f} MiB used of {limit}{share}, policy {memory['policy']}")
    return 0


def redis_memory(client) -> dict:
    """Redis's memory in use, its limit (0: none) and its eviction policy."""
    info = client.info("memory")
    return {
        "used_bytes": int(info.get("used_memory", 0)),
        "limit_bytes": int(info.get("maxmemory", 0)),
        "policy": info.get("maxmemory_policy", "unknown"),
    }
