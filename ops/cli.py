"""``grants``: the command line of the grant worker (the entry point).

Each sub-command lives in its own module with ``add_parser(subparsers)``;
settings are parsed once here and passed down.
"""

from __future__ import annotations

import argparse
import sys

from devstack import bench, demo, sandbox
from ops import backpack, replay, results
from producers import cli as publish
from worker import logs
from worker.gc_tuning import tune_gc
from worker.settings import Settings

# The producers' command, the operators' (ops/), the developers' (devstack/).
_COMMANDS = (publish, results, replay, backpack, sandbox, bench, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grants",
        description="Grant purchased items to players' inventories, exactly once.",
        epilog="Configuration comes from GRANTS_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: name the variable
        print(f"grants: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    tune_gc()
    try:
        return int(args.run(args, settings) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
