"""``grants publish``: validate a feed and publish the valid commands (the
producers' own command; the rest of ``grants`` is in ops/ and devstack/)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from producers.feed import read_feed
from producers.progress import Progress
from producers.publisher import Publisher, PublishFailed
from schemas.commands import AnyCommand
from schemas.kinds import GRANT, KINDS, kind
from worker.settings import Settings, UnsafeRedis


def kind_name(text: str) -> str:
    """An argparse type: a command kind by its name (or an older alias)."""
    try:
        return kind(text).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip('"')) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish",
        help="publish purchases from a file of JSON lines or a JSON array",
        description=(
            "Publish grant commands. FILE holds one Xsolla purchase operation per line "
            "(JSON lines), or one JSON array exactly like the API's request body. Invalid "
            "lines are reported on stderr (line, field, reason) and skipped; valid ones are "
            "published. Exit status: 0 all valid, 1 some invalid, 2 publishing failed."
        ),
    )
    p.add_argument("file", metavar="FILE", help="feed file, or - for standard input")
    p.add_argument("--project-id", type=int, required=True, help="project id the commands belong to")
    p.add_argument(
        "--kind",
        type=kind_name,
        default=GRANT,
        metavar="KIND",
        help="what each line is: " + "; ".join(f"{k.name} ({k.line})" for k in KINDS.values()) + " (default grant)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.project_id <= 0:
        print("grants publish: --project-id must be a positive integer", file=sys.stderr)
        return 2
    try:
        # utf-8-sig: a byte-order mark (editors on Windows write one) is not data.
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        print(f"grants publish: {exc}", file=sys.stderr)
        return 2
    invalid = 0

    def valid_commands() -> Iterator[AnyCommand]:
        nonlocal invalid
        for item in read_feed(stream, args.project_id, args.kind):
            if isinstance(item, list):
                invalid += 1
                for error in item:
                    print(error, file=sys.stderr)
            else:
                yield item

    progress = Progress("published")
    try:
        published = Publisher(settings).publish_many(valid_commands(), on_progress=progress.update)
    except PublishFailed as exc:
        progress.done()
        print(
            f"grants publish: {exc}\n{exc.published} commands were published before the failure; "
            "publishing the same feed again is safe (repeats are recognised and not granted twice).",
            file=sys.stderr,
        )
        return 2
    except UnsafeRedis as exc:
        progress.done()
        print(f"grants publish: nothing published: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"grants publish: the feed is not UTF-8 text: {exc}", file=sys.stderr)
        return 2
    finally:
        if stream is not sys.stdin:
            stream.close()
    progress.done()
    print(f"published {published} commands; {invalid} invalid lines skipped")
    return 1 if invalid else 0
