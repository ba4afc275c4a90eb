"""``grants``: the command line of the grant worker (the entry point).

Each sub-command lives in its own module with ``add_parser(subparsers)``;
settings are parsed once here and passed down.

Failing kindly happens here, for every command: a command that reads the
store gets it opened first (ops/args.py ``redis_client``: names the URL and
the key prefix on stderr, warns of an empty prefix); a bad setting, a
malformed URL, refused credentials or an unreachable Redis is one line on
stderr and exit 2, never a traceback; output cut short by its reader (``|
head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pydantic import ValidationError
from redis.exceptions import RedisError

from ops import backpack, dead, inventory, lanes, replay, resolve, results
from ops.args import CliError, redis_client, store_failure
from producers import cli as publish
from worker import logs
from worker.gc_tuning import tune_gc
from worker.settings import Settings

# The producers' command and the operators' (ops/).
_COMMANDS = (publish, results, replay, resolve, inventory, lanes, dead, backpack)
# The developers' (devstack/): offered where the tree has them (a checkout),
# never needed by the commands above.
_DEV_COMMANDS = ("devstack.sandbox", "devstack.bench", "devstack.demo")
# The commands that read or write the store (GRANTS_REDIS_URL): it is opened,
# named and checked before they run. (backpack reads the backend only; the
# development commands start stores of their own.)
_STORE_COMMANDS = frozenset({"publish", "results", "replay", "resolve", "inventory", "lanes", "dead"})


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


def _bad_configuration(exc: ValidationError) -> str:
    """pydantic's errors as one line naming the variables."""
    parts = []
    for error in exc.errors():
        name = "GRANTS_" + "_".join(str(p) for p in error.get("loc", ())).upper()
        parts.append(f"{name}: {error.get('msg')}")
    return "; ".join(parts) or str(exc).splitlines()[0]


def _quiet_stdout() -> None:
    """The reader went away (``| head``): point stdout at /dev/null so that
    the interpreter's last flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"grants: bad configuration: {_bad_configuration(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a *_FILE that cannot be read, and the like
        print(f"grants: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    tune_gc()
    try:
        if args.command in _STORE_COMMANDS:
            redis_client(settings)
        code = int(args.run(args, settings) or 0)
        sys.stdout.flush()
        return code
    except CliError as exc:
        print(f"grants {args.command}: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"grants {args.command}: {store_failure(exc, settings)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a program killed by SIGPIPE (128 + 13)
    except (ValueError, OSError) as exc:
        # A value refused deep down (an empty --actor), a secret file that is
        # not there: the operator's to fix, said in one line.
        print(f"grants {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
