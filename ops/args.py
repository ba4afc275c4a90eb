"""What the operator commands share: argparse types, the Redis client they
read (announced, checked, failing kindly), and aligned tables.

Every command that touches Redis gets its client from :func:`redis_client`
(ops/cli.py opens it before the command runs): it names the URL (password
redacted) and the key prefix on stderr, warns when the store holds nothing
under that prefix, and turns a malformed URL, refused credentials or an
unreachable Redis into :class:`CliError` (one line on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import redis
from redis.connection import parse_url
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producers.cli import kind_name
from schemas.records import Status
from worker.keys import Keys
from worker.replay import Filters, parse_time
from worker.settings import Settings

__all__ = [
    "CliError",
    "actor_or_default",
    "cut",
    "describe_store",
    "kind_name",
    "positive_int",
    "redact_url",
    "redis_client",
    "selection",
    "showing",
    "statuses",
    "table",
    "when",
]


class CliError(Exception):
    """A failure the operator can fix: printed as one line, exit 2."""


def when(text: str) -> int:
    """An argparse type: an ISO 8601 time (UTC unless it says) as epoch ms."""
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def statuses(allowed: Iterable[Status]) -> Callable[[str], list[Status]]:
    """An argparse type for ``--status`` (with ``action="extend"``): one status
    or a comma list of them, so ``--status failed --status in_doubt`` and
    ``--status failed,in_doubt`` say the same."""
    names = [s.value for s in allowed]

    def parse(text: str) -> list[Status]:
        out: list[Status] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if part not in names:
                raise argparse.ArgumentTypeError(f"unknown status {part!r}: one of {', '.join(names)}")
            out.append(Status(part))
        if not out:
            raise argparse.ArgumentTypeError("no status given")
        return out

    return parse


def add_selection(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The options that choose records (replay's, and resolve's without ids):
    kind, project, outcome time, SKU, user, how many; read by :func:`selection`."""
    from schemas.kinds import KINDS

    p.add_argument(
        "--kind",
        type=kind_name,
        default="grant",
        metavar="KIND",
        help=f"which commands: {', '.join(KINDS)} (default grant)",
    )
    p.add_argument("--project-id", type=int)
    p.add_argument("--since", type=when, help=f"{prefix}ISO 8601 (UTC unless it says): outcome recorded at or after")
    p.add_argument("--until", type=when, help=f"{prefix}ISO 8601 (UTC unless it says): outcome recorded at or before")
    p.add_argument("--sku", help=f"{prefix}only commands carrying this SKU")
    p.add_argument("--user", help=f"{prefix}only commands for this user id")
    p.add_argument("--limit", type=positive_int, default=1000, help=f"{prefix}at most this many (default 1000)")


def selection(args: argparse.Namespace, status: Status) -> Filters:
    """The records in ``status`` that the selecting options (``--kind``,
    ``--project-id``, ``--since``, ``--until``, ``--sku``, ``--user``,
    ``--limit``, as ``grants replay`` and ``grants resolve`` take them) pick."""
    return Filters(
        status,
        kind=args.kind,
        project_id=args.project_id,
        since_ms=args.since,
        until_ms=args.until,
        sku=args.sku,
        user=args.user,
        limit=args.limit,
    )


def actor_or_default(actor: str | None) -> str:
    """Who acts, for the record: ``--actor`` when given, else ``user@host``."""
    return actor or f"{getpass.getuser()}@{socket.gethostname()}"


# --- the store ---------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable>"
    # redis-py also takes the password as a query parameter.
    query = "&".join(
        f"{k}=***" if k == "password" else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&")
        if pair
        for k, _, v in [pair.partition("=")]
    )
    parts = parts._replace(query=query)
    if not password:
        return parts.geturl()
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def describe_store(settings: Settings) -> str:
    """Which Redis and which key prefix, as one line (no secret in it)."""
    if settings.redis_sentinels:
        where = f"sentinels {','.join(settings.redis_sentinels)} (primary {settings.redis_sentinel_master!r})"
    else:
        where = redact_url(settings.redis_url)
    source = "" if "redis_url" in settings.model_fields_set else " (the default: GRANTS_REDIS_URL is not set)"
    password = ", password from GRANTS_REDIS_PASSWORD_FILE" if settings.redis_password_file else ""
    return f"{where}{source}{password}, key prefix {settings.key_prefix!r}"


def _scrub(text: str, settings: Settings) -> str:
    for secret in settings.secrets():
        text = text.replace(secret, "***")
    return text


def store_failure(exc: Exception, settings: Settings) -> CliError:
    """A Redis failure as one line that says what to check."""
    where = redact_url(settings.redis_url) if not settings.redis_sentinels else "the sentinels' primary"
    text = _scrub(str(exc), settings).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, AuthenticationError) or (isinstance(exc, ResponseError) and "NOAUTH" in str(exc)):
        return CliError(
            f"Redis at {where} refused the credentials ({text}): give them in GRANTS_REDIS_URL "
            "(redis://user:password@host:port/db) or GRANTS_REDIS_PASSWORD_FILE"
        )
    if isinstance(exc, ResponseError) and "NOPERM" in str(exc):
        return CliError(f"Redis at {where} refused a command ({text}): the Redis user lacks a permission")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return CliError(f"cannot reach Redis at {where}: {text} (check GRANTS_REDIS_URL)")
    return CliError(f"Redis at {where} failed: {text}")


# One client per process, opened (and announced) once.
_clients: dict[int, redis.Redis] = {}


def redis_client(settings: Settings, *, announce: bool = True) -> redis.Redis:
    """The client every operator command reads the store with (fails fast).

    The first call names the store on stderr, checks the URL, the
    credentials and that Redis answers, and warns if nothing is stored under
    the key prefix; failures raise :class:`CliError`."""
    client = _clients.get(id(settings))
    if client is not None:
        return client
    if not settings.redis_sentinels:
        try:
            parse_url(settings.redis_url)
        except ValueError as exc:
            raise CliError(
                f"GRANTS_REDIS_URL={redact_url(settings.redis_url)!r} is not a Redis URL ({exc}); "
                "expected redis://[user:password@]host[:port][/db] or rediss://..."
            ) from None
    if announce:
        print(f"grants: store {describe_store(settings)}", file=sys.stderr)
    try:
        client = settings.redis_client(patient=False)
        keys = Keys(settings.key_prefix)
        pipe = client.pipeline(transaction=False)
        pipe.exists(keys.layout, keys.commands)
        (found,) = pipe.execute()
    except ValueError as exc:  # a malformed URL redis-py found later (a port that is no number)
        raise CliError(f"GRANTS_REDIS_URL={redact_url(settings.redis_url)!r} is not a Redis URL ({exc})") from None
    except RedisError as exc:
        raise store_failure(exc, settings) from None
    if not found and announce:
        print(
            f"grants: warning: this Redis holds nothing under the prefix {settings.key_prefix!r} (no "
            f"{keys.layout}, no {keys.commands}): no worker or producer has used it. "
            "Check GRANTS_REDIS_URL and GRANTS_KEY_PREFIX.",
            file=sys.stderr,
        )
    _clients[id(settings)] = client
    return client


# --- output ------------------------------------------------------------------

ELLIPSIS = "…"


def cut(text: str | None, width: int) -> tuple[str, bool]:
    """``text`` on one line, at most ``width`` characters (ending in … when
    cut); and whether it was cut."""
    flat = " ".join((text or "").split())
    if len(flat) <= width:
        return flat, False
    return flat[: width - 1] + ELLIPSIS, True


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> list[str]:
    """Lines of an aligned table, each column as wide as its widest cell or
    header; columns in ``right`` (numbers) are right-aligned. The last column
    is not padded."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    right = set(right)

    def line(row: Sequence[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(out).rstrip()

    return [line(list(headers)), *(line(r) for r in cells)]


def showing(shown: int, total: int | None, noun: str = "records") -> str:
    """The line under a list: how many of how many."""
    if total is None:
        return f"showing {shown:,} {noun}"
    return f"showing {shown:,} of {total:,} {noun}"
