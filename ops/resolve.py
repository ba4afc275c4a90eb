"""``grants resolve``: record what an operator found about in_doubt commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError

from ops.args import add_selection, selection
from schemas.records import Status
from worker import errors
from worker import resolve as rs
from worker.backends.registry import Backends
from worker.keys import Keys
from worker.ledger import Ledger
from worker.results import Results
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resolve",
        help="record what you found about in_doubt commands: granted (closed, revocable) or failed (replayable)",
        description=(
            "Settle in_doubt commands once you have looked at the player's inventory (grants inventory). "
            "--as granted closes it (a later revoke takes its items back); --as failed says it did not apply, "
            "and `grants replay --status failed` may then send it again. Only an in_doubt command is changed; "
            "each resolution is written into its history (grants results get) with --actor and --note. "
            "Name the commands (ids, or --file), or select them with the filters `grants replay` takes."
        ),
    )
    p.add_argument("ids", nargs="*", metavar="EXTERNAL_PURCHASE_ID", help="record ids (with --project-id)")
    p.add_argument("--as", dest="finding", required=True, choices=rs.FINDINGS, help="what you found")
    p.add_argument("--actor", required=True, help="who resolves, for the history")
    p.add_argument("--note", default="", help="what you saw, for the history")
    p.add_argument("--file", type=Path, help="a file of record ids, one a line (with --project-id)")
    add_selection(p, prefix="select: ")
    p.add_argument("--dry-run", action="store_true", help="print what would be resolved and why; change nothing")
    p.set_defaults(run=run)


def _targets(args: argparse.Namespace, results: Results) -> list[tuple[int, str]] | str:
    """The (project, id) targets, or why the arguments do not name any."""
    named = list(args.ids)
    if args.file is not None:
        try:
            text = args.file.read_text()
        except OSError as exc:
            return f"cannot read --file: {exc}"
        named += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if named or args.file is not None:
        if args.project_id is None:
            return "record ids need --project-id"
        if any(v is not None for v in (args.since, args.until, args.sku, args.user)):
            return "name records (ids, --file) or select them (--since, --until, --sku, --user), not both"
        return [(args.project_id, rid) for rid in dict.fromkeys(named)]
    if args.project_id is None and all(v is None for v in (args.since, args.until, args.sku, args.user)):
        return "name the commands (ids, --file) or select them (--project-id, --since, --until, --sku, --user)"
    return rs.select_in_doubt(results, selection(args, Status.in_doubt))


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = settings.redis_client(patient=False)
    keys = Keys(settings.key_prefix)
    results = Results(client, keys)
    backends = Backends(settings)
    resolver = rs.Resolver(Ledger.from_settings(client, settings), results, backends)
    status = rs.written_status(args.kind, args.finding)
    try:
        targets = _targets(args, results)
        if isinstance(targets, str):
            print(f"grants resolve: {targets}", file=sys.stderr)
            return 2
        if not targets:
            print("grants resolve: no in_doubt command matches; nothing changed", file=sys.stderr)
            return 1
        summary = rs.resolve(
            resolver,
            targets,
            finding=args.finding,
            kind=args.kind,
            actor=args.actor,
            note=args.note,
            dry_run=args.dry_run,
            on_planned=_show_plan(args),
        )
    except RedisError as exc:
        print(f"grants resolve: the results store failed: {exc}; run again, resolve is safe to repeat", file=sys.stderr)
        return 2
    except errors.BackendError as exc:
        print(f"grants resolve: reading the backend failed, nothing resolved: {exc}", file=sys.stderr)
        return 2
    finally:
        backends.close()
    return _report(args, summary, status)


def _show_plan(args: argparse.Namespace) -> Callable[[rs.Summary], None]:
    """The ``on_planned`` callback: with --dry-run, prints what each target
    would get; otherwise names on stderr the targets it refuses, and why."""

    def planned(summary: rs.Summary) -> None:
        for p in summary.planned:
            if args.dry_run:
                print(f"{'would resolve' if p.resolve else 'would skip'} {p.name}: {p.why}")
            elif not p.resolve:
                print(f"grants resolve: {p.name}: {p.why}", file=sys.stderr)

    return planned


def _report(args: argparse.Namespace, summary: rs.Summary, status: str) -> int:
    """Print what was resolved as ``status`` (or, with --dry-run, would be),
    and what to run next; the exit code: 0 when every target was resolved,
    else 1 (anything not resolved, refused or changed meanwhile, is the
    operator's to look at)."""
    todo = sum(p.resolve for p in summary.planned)
    if args.dry_run:
        print(f"dry run: {todo} would be resolved as {status}, {len(summary.planned) - todo} skipped; nothing changed")
        return 0 if todo == len(summary.planned) else 1
    verdicts = summary.verdicts
    changed = {k: v for k, v in verdicts.items() if k not in ("resolved", "skipped") and v}
    print(
        f"resolved {verdicts['resolved']} of {len(summary.planned)} as {status} (by {args.actor})"
        + (f"; changed meanwhile, left alone: {changed}" if changed else "")
        + (f"; skipped {verdicts['skipped']}" if verdicts["skipped"] else "")
    )
    if verdicts["resolved"] and args.finding == "failed":
        print(
            f"next: grants replay --status failed --kind {args.kind}"
            + (f" --project-id {args.project_id}" if args.project_id is not None else "")
            + " sends them again",
            file=sys.stderr,
        )
    return 0 if verdicts["resolved"] == len(summary.planned) else 1
