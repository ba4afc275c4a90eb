"""``grants``: the command line of the grant worker (the entry point).

Each sub-command lives in its own module with ``add_parser(subparsers)``;
settings are parsed once here and passed down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ops import backpack, dead, inventory, lanes, replay, resolve, results
from producers import cli as publish
from worker import logs
from worker.gc_tuning import tune_gc
from worker.settings import Settings

# The producers' command and the operators' (ops/).
_COMMANDS = (publish, results, replay, resolve, inventory, lanes, dead, backpack)
# The developers' (devstack/): offered where the tree has them (a checkout),
# never needed by the commands above.
_DEV_COMMANDS = ("devstack.sandbox", "devstack.bench", "devstack.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grants",
        description="Grant purchased items to players' inventories, exactly once.",
        epilog="Configuration comes from GRANTS_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    for name in _DEV_COMMANDS:
        try:
            importlib.import_module(name).add_parser(sub)
        except ModuleNotFoundError as exc:
            if exc.name != "devstack" and exc.name != name:
                raise
            # an install without the development tree
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
