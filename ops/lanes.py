"""``grants lanes``: pause and resume the sending of a project's commands.

A paused lane (``kind:project``) takes no new batch: its commands keep
accumulating in its buffer, nothing is lost, and once resumed they are sent
as usual (worker/lanes.py says what happens to batches already taken).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ops.args import actor_or_default, kind_name, redis_client, table
from schemas.kinds import KINDS
from worker.keys import Keys
from worker.lanes import Lanes, lanes_of
from worker.results import iso_ms
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lanes",
        help="pause or resume sending for a project (commands keep accumulating)",
        description=(
            "A lane is one project's commands of one kind (grant:44056). A paused lane sends nothing: "
            "its commands wait in its buffer, nothing is lost, and resume makes them flow again. "
            "Shown in `grants results stats` and in the metrics (grants_lane_paused)."
        ),
    )
    lsub = p.add_subparsers(dest="lanes_command", required=True, metavar="ACTION")
    kind_help = f"only this kind's lane: {', '.join(KINDS)} (default: every kind of the project)"

    ls = lsub.add_parser("list", help="lanes with waiting commands, batches in flight or a pause")
    ls.add_argument("--project-id", type=int, help="only this project's lanes")
    ls.add_argument("--kind", type=kind_name, metavar="KIND", help="only this kind's lanes")
    ls.add_argument("--paused", action="store_true", help="only paused lanes")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(run=run_list)

    for name, fn, text in (("pause", run_pause, "stop sending"), ("resume", run_resume, "start sending again")):
        a = lsub.add_parser(name, help=f"{text} for a project (or one kind of its commands)")
        a.add_argument("--project-id", type=int, required=True)
        a.add_argument("--kind", type=kind_name, metavar="KIND", help=kind_help)
        a.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "pause":
            a.add_argument("--actor", default=None, help="who pauses, for the record (default user@host)")
            a.add_argument("--note", default="", help="why, for whoever looks next")
        a.set_defaults(run=fn)


def _lanes(settings: Settings) -> Lanes:
    return Lanes(redis_client(settings), Keys(settings.key_prefix))


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    states = _lanes(settings).overview(args.project_id, args.kind)
    if args.paused:
        states = [s for s in states if s.paused]
    now_ms = time.time_ns() // 1_000_000
    if args.json:
        out = [
            {
                "lane": s.lane,
                "waiting": s.waiting,
                "oldest_waiting_at": iso_ms(s.oldest_ms),
                "batches_in_flight": s.batches,
                "paused": s.paused.as_json() if s.paused else None,
            }
            for s in states
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    rows = [
        (
            s.lane,
            "paused" if s.paused else "sending",
            f"{s.waiting:,}",
            f"{max(0, now_ms - s.oldest_ms) / 1000:,.1f} s" if s.oldest_ms else "",
            s.batches,
            iso_ms(s.paused.since_ms) if s.paused else "",
            s.paused.actor if s.paused else "",
            s.paused.note if s.paused else "",
        )
        for s in states
    ]
    for line in table(
        ("LANE", "STATE", "WAITING", "OLDEST", "BATCHES", "PAUSED_SINCE", "BY", "NOTE"), rows, right={2, 3, 4}
    ):
        print(line)
    print(f"{len(states)} lanes ({sum(bool(s.paused) for s in states)} paused)", file=sys.stderr)
    return 0


def run_pause(args: argparse.Namespace, settings: Settings) -> int:
    actor = actor_or_default(args.actor)
    done = _lanes(settings).pause(lanes_of(args.project_id, args.kind), actor=actor, note=args.note)
    if args.json:
        print(json.dumps([{"lane": lane, "result": v, "batches_returned": n} for lane, v, n in done], indent=2))
        return 0
    for lane, verdict, returned in done:
        back = f"; {returned} batch(es) taken but not sent went back to its buffer" if returned else ""
        print(f"{lane}: {'paused' if verdict == 'paused' else 'already paused'}{back}")
    print(
        "commands keep accumulating and nothing is sent; a call already in progress, and retries of calls "
        "already made, finish. `grants lanes resume` to send again.",
        file=sys.stderr,
    )
    return 0


def run_resume(args: argparse.Namespace, settings: Settings) -> int:
    done = _lanes(settings).resume(lanes_of(args.project_id, args.kind))
    if args.json:
        print(json.dumps([{"lane": lane, "was_paused": was} for lane, was in done], indent=2))
        return 0
    for lane, was in done:
        print(f"{lane}: {'resumed' if was else 'was not paused'}")
    return 0
