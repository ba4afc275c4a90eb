"""``grants dead``: dead letters, the entries and messages that were not
valid commands (list, show one whole, purge)."""

from __future__ import annotations

import argparse
import json
import sys

from ops.args import cut, positive_int, redis_client, showing, table
from worker.dead import DeadLetters
from worker.keys import Keys
from worker.settings import Settings

REASON_WIDTH = 70


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dead",
        help="dead letters: what arrived and was not a valid command",
        description=(
            "A stream entry or broker message that is not a valid command is kept as a dead letter, with "
            "its raw payload and the reason, for the results retention. List them, show one whole, purge them."
        ),
    )
    dsub = p.add_subparsers(dest="dead_command", required=True, metavar="ACTION")

    ls = dsub.add_parser("list", help="dead letters, oldest first, with their reason")
    ls.add_argument("--limit", type=positive_int, default=100, help="at most this many (default 100)")
    ls.add_argument("--wide", action="store_true", help="reasons whole, never cut")
    ls.add_argument("--json", action="store_true", help="print a JSON array (raw payloads included)")
    ls.set_defaults(run=run_list)

    sh = dsub.add_parser("show", help="one dead letter whole: its reason and raw payload")
    sh.add_argument("letter_id", metavar="ID", help="the id `grants dead list` shows")
    out = sh.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print it as JSON")
    out.add_argument("--raw", action="store_true", help="print the raw payload alone, exactly as kept")
    sh.set_defaults(run=run_show)

    pg = dsub.add_parser("purge", help="delete dead letters (by id, or --all), for good")
    pg.add_argument("letter_ids", metavar="ID", nargs="*", help="the ids to delete")
    pg.add_argument("--all", action="store_true", help="every dead letter")
    pg.add_argument("--yes", action="store_true", help="really delete (without it: say what would go)")
    pg.add_argument("--json", action="store_true", help="print the result as JSON")
    pg.set_defaults(run=run_purge)


def _dead(settings: Settings) -> DeadLetters:
    return DeadLetters(redis_client(settings), Keys(settings.key_prefix), retention_ms=settings.result_ttl_ms)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    dead = _dead(settings)
    letters = []
    for letter in dead.iter():
        letters.append(letter)
        if len(letters) >= args.limit:
            break
    total = dead.count()
    if args.json:
        print(json.dumps(letters, indent=2, ensure_ascii=False))
        print(showing(len(letters), total, "dead letters"), file=sys.stderr)
        return 0
    rows: list[tuple] = []
    first_cut = None
    for d in letters:
        reason, was_cut = (d["reason"] or "", False) if args.wide else cut(d["reason"], REASON_WIDTH)
        if was_cut and first_cut is None:
            first_cut = d["id"]
        size = f"{d['raw_size']:,}" + ("+" if d["raw_truncated"] else "")
        rows.append((d["id"], d["received_at"] or "", d["source"] or "", d["external_purchase_id"] or "", size, reason))
    for line in table(("ID", "RECEIVED", "SOURCE", "PURCHASE_ID", "BYTES", "REASON"), rows, right={4}):
        print(line)
    print(showing(len(letters), total, "dead letters"), file=sys.stderr)
    if first_cut is not None:
        print(
            f"reasons cut to {REASON_WIDTH} characters (…): see one whole with `grants dead show {first_cut}`, "
            "all with --wide",
            file=sys.stderr,
        )
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    letter = _dead(settings).get(args.letter_id)
    if letter is None:
        print(f"no dead letter {args.letter_id!r} (purged, or past the results retention)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(letter, indent=2, ensure_ascii=False))
        return 0
    if args.raw:
        sys.stdout.write(letter["raw"] or "")
        return 0
    kept = (
        f"{letter['raw_size']:,} bytes, the first {len(letter['raw'] or ''):,} kept"
        if letter["raw_truncated"]
        else f"{letter['raw_size']:,} bytes"
    )
    for name, value in (
        ("id", letter["id"]),
        ("received", letter["received_at"]),
        ("source", letter["source"]),
        ("purchase id", letter["external_purchase_id"] or "(none found)"),
        ("size", kept),
        ("reason", letter["reason"]),
    ):
        print(f"{name + ':':<13}{value}")
    print("raw:")
    print(letter["raw"] or "")
    return 0


def run_purge(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.letter_ids) == bool(args.all):
        print("grants dead purge: give the ids to delete, or --all", file=sys.stderr)
        return 2
    dead = _dead(settings)
    if not args.yes:
        n = dead.count() if args.all else sum(dead.get(i) is not None for i in args.letter_ids)
        if args.json:
            print(json.dumps({"deleted": 0, "would_delete": n}))
        else:
            print(f"would delete {n} dead letter(s); nothing changed. Run again with --yes to delete them.")
        return 0
    if args.all:
        n = dead.purge_all()
        print(json.dumps({"deleted": n}) if args.json else f"deleted {n} dead letter(s)")
        return 0
    found = dead.purge(args.letter_ids)
    missing = [i for i, ok in zip(args.letter_ids, found, strict=True) if not ok]
    if args.json:
        print(json.dumps({"deleted": sum(found), "not_found": missing}))
    else:
        print(f"deleted {sum(found)} dead letter(s)")
    if missing:
        print(f"not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
