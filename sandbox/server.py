"""Run the sandbox as a real HTTP server (uvicorn) and its command line.

``serve`` is the programmatic entry point; ``add_arguments`` and ``run`` let a
CLI (``grants sandbox ...`` or ``python -m sandbox ...``) expose it. Credentials
come from flags or, failing those, from the environment. This module is the
only place in the sandbox that reads the environment, and only ``run`` (through
``_credentials`` and ``_secret``) does: everything else takes its settings as
arguments. No credential (Xsolla API key, Backpack token or host id, PlayFab
secret key) is ever printed or logged.

Backpack and PlayFab credentials have defaults for local use
(``sandbox.backpack.DEFAULT_BACKPACK_*``, ``sandbox.playfab.DEFAULT_PLAYFAB_SECRET_KEY``);
override them with ``--backpack-token-file`` / $GRANTS_BACKPACK_TOKEN_FILE /
$GRANTS_BACKPACK_TOKEN, ``--backpack-host-id`` / $GRANTS_BACKPACK_HOST_ID and
``--playfab-secret-key-file`` / $GRANTS_PLAYFAB_SECRET_KEY_FILE /
$GRANTS_PLAYFAB_SECRET_KEY.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.types import ASGIApp

from sandbox.app import create_app
from sandbox.backpack import DEFAULT_BACKPACK_HOST_ID, DEFAULT_BACKPACK_TOKEN
from sandbox.faults import Faults
from sandbox.playfab import DEFAULT_PLAYFAB_SECRET_KEY, PlayFabConfig
from sandbox.store import Store

if TYPE_CHECKING:
    import uvicorn

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8900
# *.sqlite3 is git-ignored, so a default run leaves the work tree clean.
DEFAULT_DB = "sandbox.sqlite3"
ENV_MERCHANT_ID = "GRANTS_XSOLLA_MERCHANT_ID"
ENV_API_KEY = "GRANTS_XSOLLA_API_KEY"
ENV_API_KEY_FILE = "GRANTS_XSOLLA_API_KEY_FILE"
ENV_BACKPACK_TOKEN = "GRANTS_BACKPACK_TOKEN"
ENV_BACKPACK_TOKEN_FILE = "GRANTS_BACKPACK_TOKEN_FILE"
ENV_BACKPACK_HOST_ID = "GRANTS_BACKPACK_HOST_ID"
ENV_PLAYFAB_SECRET_KEY = "GRANTS_PLAYFAB_SECRET_KEY"
ENV_PLAYFAB_SECRET_KEY_FILE = "GRANTS_PLAYFAB_SECRET_KEY_FILE"
# The fault options: FaultConfig field -> argparse destination.
_FAULT_OPTIONS = {
    "latency_ms": "latency_ms",
    "rate_5xx": "rate_5xx",
    "rate_429": "rate_429",
    "retry_after_s": "retry_after",
    "rate_drop": "rate_drop",
    "seed": "seed",
}


def serve(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_path: str = DEFAULT_DB,
    merchant_id: str,
    api_key: str,
    idempotent: bool = False,
    faults: Faults | None = None,
    backpack_token: str = DEFAULT_BACKPACK_TOKEN,
    backpack_host_id: str = DEFAULT_BACKPACK_HOST_ID,
    playfab_secret_key: str = DEFAULT_PLAYFAB_SECRET_KEY,
    playfab_config: PlayFabConfig | None = None,
) -> None:
    """Serve the fake Xsolla API on host:port until interrupted (SIGINT/SIGTERM).

    ``port=0`` picks a free port; the start-up line printed to stdout,
    ``sandbox listening on http://HOST:PORT (db=..., idempotent=...)``, names
    the real one.
    """
    import uvicorn

    store = Store(db_path)
    app = create_app(
        store,
        faults or Faults(),
        merchant_id,
        api_key,
        idempotent,
        backpack_token=backpack_token,
        backpack_host_id=backpack_host_id,
        playfab_secret_key=playfab_secret_key,
        playfab_config=playfab_config,
    )
    config = _uvicorn_config(app, host, port)
    # Bind first so the printed line can name the port actually bound.
    sock = config.bind_socket()
    _announce(host, sock.getsockname()[1], db_path, idempotent)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()


def _uvicorn_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """How uvicorn serves the sandbox: the fastest loop and HTTP parser
    installed, quiet, and quick to stop."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvloop + httptools are what make ~1 ms per call possible; fall back
        # quietly so the sandbox still runs where they are not installed.
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        access_log=False,
        log_level="warning",
        lifespan="off",
        # A hung (scripted) or dropped-without-transport request must not
        # keep Ctrl-C from stopping the server.
        timeout_graceful_shutdown=1,
    )


def _announce(host: str, port: int, db_path: str, idempotent: bool) -> None:
    """Print the start-up line ``sandbox listening on http://HOST:PORT (db=...,
    idempotent=...)`` (an IPv6 host in brackets), flushed at once: whoever
    started the sandbox reads the port from it."""
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"sandbox listening on http://{shown_host}:{port} (db={db_path}, idempotent={str(idempotent).lower()})",
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options to ``parser`` (for ``grants sandbox``)."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to bind, 0 for any free one (default {DEFAULT_PORT})"
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    parser.add_argument(
        "--merchant-id", default=None, help=f"Basic-auth user expected from clients (default ${ENV_MERCHANT_ID})"
    )
    parser.add_argument(
        "--api-key-file", default=None, help=f"file holding the expected API key (default ${ENV_API_KEY})"
    )
    parser.add_argument(
        "--idempotent", action="store_true", help="apply each (project, external_purchase_id) at most once"
    )
    backends = parser.add_argument_group("Backpack and PlayFab")
    backends.add_argument(
        "--backpack-token-file",
        default=None,
        help=f"file holding the Bearer token Backpack calls must send "
        f"(default ${ENV_BACKPACK_TOKEN_FILE}, ${ENV_BACKPACK_TOKEN}, "
        f"else a fixed local-only token)",
    )
    backends.add_argument(
        "--backpack-host-id",
        default=None,
        help=f"X-HOST-ID Backpack calls must send (default ${ENV_BACKPACK_HOST_ID}, else a fixed local-only id)",
    )
    backends.add_argument(
        "--playfab-secret-key-file",
        default=None,
        help=f"file holding the X-SecretKey PlayFab calls must send "
        f"(default ${ENV_PLAYFAB_SECRET_KEY_FILE}, ${ENV_PLAYFAB_SECRET_KEY}, "
        f"else a fixed local-only key)",
    )
    backends.add_argument(
        "--playfab-auto-create-players",
        action="store_true",
        help="treat every PlayFabId as an existing player (created on first grant)",
    )
    backends.add_argument(
        "--playfab-no-shuffle", action="store_true", help="answer GrantItemsToUsers results in request order"
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every API call")
    faults.add_argument("--rate-5xx", type=float, default=0.0, help="share of calls answered 503 before applying")
    faults.add_argument("--rate-429", type=float, default=0.0, help="share of calls answered 429 before applying")
    faults.add_argument("--retry-after", type=int, default=0, help="Retry-After seconds sent with 429")
    faults.add_argument(
        "--rate-drop", type=float, default=0.0, help="share of calls applied, then dropped without a response"
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the random fault draws")


def _secret(flag_file: str | None, env_file: str, env_value: str, default: str, what: str) -> str:
    """A credential from a file (flag, else $env_file), else $env_value, else the default."""
    path = flag_file or os.environ.get(env_file)
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"sandbox: cannot read the {what} file {path}: {exc.strerror}") from None
        if not value:
            raise SystemExit(f"sandbox: the {what} file {path} is empty")
        return value
    return os.environ.get(env_value) or default


def run(args: argparse.Namespace) -> None:
    """Entry point behind the CLI: resolve credentials, build faults, serve."""
    credentials = _credentials(args)
    serve(
        host=args.host,
        port=args.port,
        db_path=args.db,
        idempotent=args.idempotent,
        faults=_faults(args),
        playfab_config=PlayFabConfig(
            auto_create_players=bool(getattr(args, "playfab_auto_create_players", False)),
            shuffle_results=not getattr(args, "playfab_no_shuffle", False),
            shuffle_seed=args.seed,
        ),
        **credentials,
    )


def _credentials(args: argparse.Namespace) -> dict[str, str]:
    """Every credential ``serve`` takes, from flags, files or the environment."""
    merchant_id = args.merchant_id or os.environ.get(ENV_MERCHANT_ID)
    api_key_file = args.api_key_file or os.environ.get(ENV_API_KEY_FILE)
    if api_key_file:
        try:
            api_key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"sandbox: cannot read the API key file {api_key_file}: {exc.strerror}") from None
    else:
        api_key = os.environ.get(ENV_API_KEY, "")
    if not merchant_id:
        raise SystemExit(f"sandbox: give --merchant-id or set {ENV_MERCHANT_ID}")
    if not api_key:
        raise SystemExit(f"sandbox: give --api-key-file or set {ENV_API_KEY}")
    return {
        "merchant_id": merchant_id,
        "api_key": api_key,
        "backpack_token": _secret(
            getattr(args, "backpack_token_file", None),
            ENV_BACKPACK_TOKEN_FILE,
            ENV_BACKPACK_TOKEN,
            DEFAULT_BACKPACK_TOKEN,
            "Backpack token",
        ),
        "backpack_host_id": (
            getattr(args, "backpack_host_id", None) or os.environ.get(ENV_BACKPACK_HOST_ID) or DEFAULT_BACKPACK_HOST_ID
        ),
        "playfab_secret_key": _secret(
            getattr(args, "playfab_secret_key_file", None),
            ENV_PLAYFAB_SECRET_KEY_FILE,
            ENV_PLAYFAB_SECRET_KEY,
            DEFAULT_PLAYFAB_SECRET_KEY,
            "PlayFab secret key",
        ),
    }


def _faults(args: argparse.Namespace) -> Faults:
    """The fault config the options give."""
    try:
        return Faults(**{name: getattr(args, dest) for name, dest in _FAULT_OPTIONS.items()})
    except ValidationError as exc:
        # Only the field and reason: nothing here can contain the key.
        first = exc.errors(include_url=False, include_input=False)[0]
        raise SystemExit(f"sandbox: bad fault option {first['loc'][0]}: {first['msg']}") from None
