"""``grants replay``: send failed (or in_doubt) commands again."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from ops.args import actor_or_default, add_selection, redis_client, selection
from producers.progress import Progress
from schemas.records import REPLAYABLE, Status
from worker import replay as rp
from worker.backends.registry import project_is_idempotent
from worker.keys import Keys
from worker.ledger import Ledger
from worker.results import Results
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="re-queue failed or in_doubt commands (guarded: never an applied one)",
        description=(
            "Put chosen failed or in_doubt commands back into the pipeline: grants, revokes (refunds), "
            "Backpack creates and deletes, PlayFab deletes. An applied, rejected or refunded one is never "
            "replayed; in_doubt ones need --force unless GRANTS_XSOLLA_IDEMPOTENT is true, because they may "
            "already be applied. Each replay is recorded in the command's history (grants results get)."
        ),
    )
    p.add_argument("--status", required=True, choices=sorted(s.value for s in REPLAYABLE))
    add_selection(p)
    p.add_argument("--dry-run", action="store_true", help="print what would be replayed and why; change nothing")
    p.add_argument("--force", action="store_true", help="replay in_doubt commands (they may apply twice)")
    p.add_argument("--actor", default=None, help="who is replaying, for the history (default user@host)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON (the plan with --dry-run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    actor = actor_or_default(args.actor)
    client = redis_client(settings)
    ledger = Ledger.from_settings(client, settings)
    progress = Progress("replayed")
    try:
        summary = rp.replay(
            ledger,
            Results(client, Keys(settings.key_prefix)),
            selection(args, Status(args.status)),
            actor=actor,
            force=args.force,
            dry_run=args.dry_run,
            idempotent=lambda p: project_is_idempotent(settings, p),
            on_planned=_show_plan(args, progress),
            on_progress=progress.update,
        )
    except RedisError as exc:
        progress.done()
        print(f"grants replay: the results store failed: {exc}; run again, replay is safe to repeat", file=sys.stderr)
        return 2
    progress.done()
    return _report(args, summary, actor)


def _show_plan(args: argparse.Namespace, progress: Progress) -> Callable[[rp.Summary], None]:
    """The ``on_planned`` callback: prints the plan (with --dry-run, or when
    in_doubt commands wait for --force; not with --json) and sets the
    progress total to the commands to replay."""

    def planned(summary: rp.Summary) -> None:
        if (args.dry_run or summary.needs_force) and not args.json:
            for p in summary.planned:
                print(f"{'would replay' if p.replay else 'would skip'} {p.name}: {p.why}")
        progress.total = sum(p.replay for p in summary.planned)

    return planned


def _report(args: argparse.Namespace, summary: rp.Summary, actor: str) -> int:
    """Print what the replay did (or, with --dry-run, would do); the exit code."""
    if summary.needs_force:
        print(
            f"\nNot replaying {len(summary.planned)} in_doubt command(s). {rp.IN_DOUBT_RISK}\n"
            "Run again with --force once you have checked.",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(_as_json(args, summary, actor), indent=2, ensure_ascii=False))
        return 0
    if args.dry_run:
        print(
            f"dry run: {sum(p.replay for p in summary.planned)} would be replayed, "
            f"{sum(not p.replay for p in summary.planned)} skipped; nothing changed"
        )
        return 0
    if args.force and args.status == Status.in_doubt.value:
        print(f"warning: {rp.IN_DOUBT_RISK}", file=sys.stderr)
    print(_done_line(summary, actor))
    return 0


def _as_json(args: argparse.Namespace, summary: rp.Summary, actor: str) -> dict[str, Any]:
    """The outcome as ``--json`` prints it (the plan with --dry-run)."""
    return {
        "dry_run": args.dry_run,
        "actor": actor,
        "selected": len(summary.planned),
        "verdicts": {} if args.dry_run else dict(summary.verdicts),
        "planned": [{"name": p.name, "replay": p.replay, "why": p.why} for p in summary.planned],
    }


def _done_line(summary: rp.Summary, actor: str) -> str:
    """One line: how many were replayed, left alone (changed meanwhile, by
    why) and skipped, and by whom."""
    verdicts = summary.verdicts
    changed = {k: v for k, v in verdicts.items() if k not in ("replayed", "skipped") and v}
    return (
        f"replayed {verdicts['replayed']} of {len(summary.planned)} selected"
        + (f"; left alone: {', '.join(f'{n} {why}' for why, n in changed.items())}" if changed else "")
        + (f"; skipped {verdicts['skipped']}" if verdicts["skipped"] else "")
        + f" (as {actor})"
    )
