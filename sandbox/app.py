"""The fake backends and their admin endpoints, as one ASGI app.

Xsolla inventory API (HTTP Basic auth, merchant_id:api_key), bodies are JSON
arrays:

- ``POST /v2/project/{project_id}/inventory/purchase``
- ``POST /v2/project/{project_id}/inventory/reward``
- ``POST /v2/project/{project_id}/inventory/revoke``

Xsolla Backpack (``sandbox.backpack``) under ``/web/backpack/`` and PlayFab's
Admin API (``sandbox.playfab``) under ``/playfab/Admin/``. Every API call of
every backend goes through ``_Sandbox.call``: latency, auth, injected faults,
apply, then drop/hang; all share one fault config, one store and one set of
stats.

Admin (no auth) lives under ``/sandbox/``; see ``create_app`` for the list.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.backpack import (
    DEFAULT_BACKPACK_HOST_ID,
    DEFAULT_BACKPACK_TOKEN,
    BackpackApi,
)
from sandbox.common import json_response, padded, phrase, shaped_fault
from sandbox.faults import WRONG_USER_ID, FaultConfig, Faults
from sandbox.operations import (
    ITEMS_OPERATIONS,
    MAX_OPERATIONS_PER_CALL,
    PURCHASES,
    describe_error,
)
from sandbox.playfab import DEFAULT_PLAYFAB_SECRET_KEY, PlayFabApi, PlayFabConfig
from sandbox.store import NotEnough, Store

# Xsolla's error codes for the cases we imitate (the "[0401]" prefix is part
# of Xsolla's message format).
_CODE_AUTH = 1501
_CODE_BAD_REQUEST = 1102
_CODE_NOT_FOUND = 4001
# Ours: marks errors the sandbox made up on purpose (Xsolla has no such code).
_CODE_INJECTED = 0

_KINDS = ("purchase", "reward", "revoke")
# Every audit kind, for GET /sandbox/audit/counts.
_AUDIT_KINDS = (*_KINDS, "backpack.create", "backpack.delete", "playfab.grant", "playfab.revoke")
# Path prefixes of API calls (timed, and droppable by the outer layer).
_API_PREFIXES = ("/v2/", "/web/backpack/", "/playfab/")
_CATALOG_BODY: TypeAdapter[list[str] | None] = TypeAdapter(list[str] | None)
_DEFAULT_AUDIT_LIMIT = 10000
_MAX_AUDIT_LIMIT = 100000
# Where the outer wrapper gives the handler its per-request controls.
_CONTROL_KEY = "sandbox.control"


_json = json_response


def _xsolla_error(status: int, code: int, message: str,
                  headers: dict[str, str] | None = None) -> Response:
    return _json(
        {"statusCode": status, "errorCode": code, "errorMessage": f"[0401]: {message}"},
        status,
        headers,
    )


def _xsolla_fault(status: int, retry_after: int | None) -> Response:
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return _xsolla_error(status, _CODE_INJECTED, f"{phrase(status)} (sandbox fault)", headers)


def _wrong_user(response: Response) -> Response:
    data = orjson.loads(response.body)
    for op in data["operations"]:
        op["user"]["id"] = WRONG_USER_ID
    return _json(data, response.status_code)


def _admin_error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class _CallControl:
    """Per-request flags the handler sets for the outer wrapper."""

    __slots__ = ("drop",)

    def __init__(self) -> None:
        self.drop = False


class _Stats:
    """Counters behind ``GET /sandbox/stats``; ``POST /sandbox/reset`` zeroes them."""

    def __init__(self) -> None:
        self.calls = 0
        self.operations_received = 0
        self.operations_processed = 0
        self.max_operations_per_call = 0
        self.ignored_operations = 0
        self.responses: Counter[str] = Counter()
        self.api_seconds = 0.0
        # "xsolla", "backpack", "playfab": calls, and items the call carried
        # (Backpack items created, PlayFab ItemGrants/Items received).
        self.calls_by_api: Counter[str] = Counter()
        self.items_by_api: Counter[str] = Counter()


class _Sandbox:
    """Mutable state shared by the handlers of one app."""

    def __init__(self, store: Store, faults: Faults, merchant_id: str, api_key: str,
                 idempotent: bool) -> None:
        self.store = store
        self.faults = faults
        self.idempotent = idempotent
        self.stats = _Stats()
        self._merchant_id = str(merchant_id).encode()
        self._api_key = api_key.encode()
        # Exact header most clients send; lets the common case skip decoding.
        self._expected_header = b"Basic " + base64.b64encode(
            self._merchant_id + b":" + self._api_key
        )

    # ------------------------------------------------------------------ auth

    def check_auth(self, header: str | None) -> Response | None:
        """None if the Basic credentials are right, else the 401/403 response."""
        # Bytes, not str: compare_digest refuses non-ASCII str, and a header
        # is whatever the client sent (Starlette decodes it as latin-1).
        if header is not None and hmac.compare_digest(
            header.encode("latin-1"), self._expected_header
        ):
            return None
        if header is None:
            return _xsolla_error(401, _CODE_AUTH, "Authorization failed: Authorization header not sent",
                                 {"WWW-Authenticate": 'Basic realm="xsolla-sandbox"'})
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return _xsolla_error(401, _CODE_AUTH, "Authorization failed: Basic authorization expected",
                                 {"WWW-Authenticate": 'Basic realm="xsolla-sandbox"'})
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            user, sep, password = b"", b"", b""
        # compare_digest on both parts, always, so timing says nothing about
        # which one was wrong.
        ok_user = hmac.compare_digest(user, self._merchant_id)
        ok_key = hmac.compare_digest(password, self._api_key)
        if sep and ok_user and ok_key:
            return None
        return _xsolla_error(403, _CODE_AUTH, "Authorization failed: wrong merchant ID or API key")

    # ------------------------------------------------------------------- API

    async def call(
        self,
        request: Request,
        api: str,
        authorize: Callable[[Request], Response | None],
        fault_response: Callable[[int, int | None], Response],
        apply: Callable[[], Awaitable[Response]],
        misattribute: Callable[[Response], Response] | None = None,
    ) -> Response:
        """One API call of any backend: latency, auth, faults, apply.

        ``authorize`` returns None or the refusal; ``fault_response(status,
        retry_after)`` shapes an injected error the backend's way; ``apply``
        validates and applies the request and returns the answer;
        ``misattribute`` rewrites a success answer to name another user (the
        ``wrong_user`` fault; None: the backend has no such answer).
        """
        stats = self.stats
        stats.calls += 1
        stats.calls_by_api[api] += 1
        faults = self.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        denied = authorize(request)
        if denied is not None:
            return self._count(denied)
        injection = faults.next(request.scope["path"])
        if injection is None:
            return self._count(await apply())
        action = injection.action
        if action == "answer":
            # Before anything is applied: the client may safely retry.
            return self._count(shaped_fault(request, injection, fault_response))
        response = await apply()
        # Applied already: now make the client believe it may not have been,
        # or answer something it must not trust.
        if action == "drop":
            request.scope[_CONTROL_KEY].drop = True
            stats.responses["dropped"] += 1
            return response
        if action == "hang":
            await asyncio.sleep(injection.hang_s)
        elif action == "apply":
            response = shaped_fault(request, injection, fault_response)
        elif action == "pad":
            response = padded(response, injection.pad_bytes)
        elif action == "wrong_user" and misattribute is not None and 200 <= response.status_code < 300:
            response = misattribute(response)
        return self._count(response)

    async def api(self, request: Request, kind: str) -> Response:
        """One Xsolla inventory call."""

        def authorize(req: Request) -> Response | None:
            return self.check_auth(req.headers.get("authorization"))

        async def apply() -> Response:
            return self._apply(request.path_params["project_id"], kind, await request.body())

        return await self.call(request, "xsolla", authorize, _xsolla_fault, apply, _wrong_user)

    def _apply(self, project_id: int, kind: str, body: bytes) -> Response:
        adapter = PURCHASES if kind == "purchase" else ITEMS_OPERATIONS
        try:
            ops = adapter.validate_json(body)
        except ValidationError as exc:
            return _xsolla_error(422, _CODE_BAD_REQUEST, describe_error(exc))
        stats = self.stats
        received = len(ops)
        stats.items_by_api["xsolla"] += received
        stats.operations_received += received
        stats.max_operations_per_call = max(stats.max_operations_per_call, received)
        if received > MAX_OPERATIONS_PER_CALL:
            # Like Xsolla: the excess is silently ignored, not an error.
            stats.ignored_operations += received - MAX_OPERATIONS_PER_CALL
            ops = ops[:MAX_OPERATIONS_PER_CALL]
        store = self.store
        unknown = store.unknown_skus(project_id, (item.sku for op in ops for item in op.items))
        if unknown:
            return _xsolla_error(404, _CODE_NOT_FOUND, f"Item with sku = '{unknown[0]}' not found")
        try:
            if kind == "purchase":
                results = store.apply_purchases(project_id, ops, self.idempotent)
            elif kind == "reward":
                results = store.apply_rewards(project_id, ops)
            else:
                results = store.apply_revokes(project_id, ops)
        except NotEnough:
            return _xsolla_error(404, _CODE_NOT_FOUND, "Failed to remove this number of items")
        stats.operations_processed += len(ops)
        return _json({"count": len(results), "operations": results})

    def _count(self, response: Response) -> Response:
        self.stats.responses[str(response.status_code)] += 1
        return response

    # ----------------------------------------------------------------- admin

    def stats_body(self) -> dict[str, Any]:
        """The ``GET /sandbox/stats`` document."""
        s = self.stats
        return {
            "calls": s.calls,
            "operations_received": s.operations_received,
            "operations_processed": s.operations_processed,
            "max_operations_per_call": s.max_operations_per_call,
            "ignored_operations": s.ignored_operations,
            "faults": dict(self.faults.counts),
            "responses": dict(s.responses),
            "api_seconds_total": s.api_seconds,
            "idempotent": self.idempotent,
            "calls_by_api": dict(s.calls_by_api),
            "items_by_api": dict(s.items_by_api),
        }


def _query_int(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return int(raw)  # ValueError is turned into a 400 by the caller


async def _read_json(request: Request) -> Any:
    return orjson.loads(await request.body())


class _Outermost:
    """Outermost ASGI layer: times API calls and can drop the connection.

    Dropping must happen below HTTP: the request has been applied and the
    client must see the connection die with no response at all (httpx:
    RemoteProtocolError "Server disconnected without sending a response").
    Only the server's own ``send`` knows the socket: under uvicorn it is a
    bound method of the connection's RequestResponseCycle, whose
    ``transport`` we abort instead of writing the response.
    """

    def __init__(self, app: ASGIApp, sandbox: _Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_API_PREFIXES):
            await self.app(scope, receive, send)
            return
        control = _CallControl()
        scope[_CONTROL_KEY] = control
        dropped = False

        async def guarded_send(message: Message) -> None:
            nonlocal dropped
            if dropped:
                return  # swallow the body of the response we never started
            if message["type"] == "http.response.start" and control.drop:
                dropped = True
                await _drop_connection(send)
                return
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, guarded_send)
        finally:
            self.sandbox.stats.api_seconds += time.perf_counter() - started


async def _drop_connection(send: Send) -> None:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Not uvicorn (or a different one): never answering is the closest
        # we can get; the client's read timeout ends the call.
        await asyncio.sleep(3600)
        return
    transport.abort()
    # abort() reports connection_lost on a later loop iteration. Wait for it,
    # so uvicorn knows the client is gone and does not log "returned without
    # starting response" or try to send a 500 of its own.
    for _ in range(20):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)


def create_app(store: Store, faults: Faults, merchant_id: str, api_key: str,
               idempotent: bool = False, *,
               backpack_token: str = DEFAULT_BACKPACK_TOKEN,
               backpack_host_id: str = DEFAULT_BACKPACK_HOST_ID,
               playfab_secret_key: str = DEFAULT_PLAYFAB_SECRET_KEY,
               playfab_config: PlayFabConfig | None = None) -> ASGIApp:
    """Build the sandbox ASGI app over ``store`` and ``faults``.

    ``backpack_token`` and ``backpack_host_id`` are what Backpack calls must
    send (``Authorization: Bearer <token>``, ``X-HOST-ID``);
    ``playfab_secret_key`` what PlayFab calls must send in ``X-SecretKey``.
    The defaults are for local use only.

    Admin endpoints (no auth):

    - ``GET /sandbox/health`` -> ``{"status": "ok"}``
    - ``GET /sandbox/audit?project_id=&after_id=0&limit=10000`` ->
      ``{"entries": [...], "next_after_id": n}``
      (rows of Backpack/PlayFab changes also carry ``item_id``; PlayFab rows
      have ``project_id`` 0)
    - ``GET /sandbox/audit/counts?project_id=&kind=purchase`` -> ``{"counts": {epid: n}}``
      (``kind`` may be any audit kind, e.g. ``playfab.grant``: then per Annotation)
    - ``GET /sandbox/balances?project_id=&user_id=`` -> ``{"balances": [...]}``
    - ``GET|PUT /sandbox/projects/{project_id}/catalog`` (PUT body: list of SKUs or null)
    - ``GET|PUT /sandbox/faults`` (PUT replaces the whole config)
    - ``GET|PUT /sandbox/config`` ``{"idempotent": bool}``
    - ``GET /sandbox/stats``; ``POST /sandbox/reset`` (or PUT) zeroes the
      counters, returns the zeroed stats; data, faults and config stay

    Backpack's admin endpoints are listed in ``sandbox.backpack``, PlayFab's
    in ``sandbox.playfab``.
    """
    sb = _Sandbox(store, faults, merchant_id, api_key, idempotent)
    backpack = BackpackApi(sb, backpack_token, backpack_host_id)
    playfab = PlayFabApi(sb, playfab_secret_key, playfab_config)

    def api_route(kind: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await sb.api(request, kind)

        return Route(f"/v2/project/{{project_id:int}}/inventory/{kind}", endpoint,
                     methods=["POST"], name=kind)

    # Every handler is async so that all store access stays on the event-loop
    # thread (sync handlers would run in a thread pool).
    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def audit(request: Request) -> Response:
        try:
            project_id = _query_int(request, "project_id", None)
            after_id = _query_int(request, "after_id", 0) or 0
            limit = _query_int(request, "limit", _DEFAULT_AUDIT_LIMIT) or 0
        except ValueError:
            return _admin_error(400, "project_id, after_id and limit must be integers")
        limit = max(0, min(limit, _MAX_AUDIT_LIMIT))
        entries = sb.store.audit(project_id, after_id, limit)
        next_after_id = entries[-1]["id"] if entries else after_id
        return _json({"entries": entries, "next_after_id": next_after_id})

    async def audit_counts(request: Request) -> Response:
        try:
            project_id = _query_int(request, "project_id", None)
        except ValueError:
            return _admin_error(400, "project_id must be an integer")
        kind = request.query_params.get("kind", "purchase")
        if kind not in _AUDIT_KINDS:
            return _admin_error(400, f"kind must be one of {', '.join(_AUDIT_KINDS)}")
        return _json({"counts": sb.store.audit_counts(project_id, kind)})

    async def balances(request: Request) -> Response:
        try:
            project_id = _query_int(request, "project_id", None)
        except ValueError:
            return _admin_error(400, "project_id must be an integer")
        user_id = request.query_params.get("user_id") or None
        return _json({"balances": sb.store.balances(project_id, user_id)})

    async def catalog(request: Request) -> Response:
        project_id = request.path_params["project_id"]
        if request.method == "PUT":
            try:
                # An empty body counts as null (httpx sends none for json=None).
                skus = _CATALOG_BODY.validate_json(await request.body() or b"null")
            except ValidationError as exc:
                return _admin_error(422, describe_error(exc))
            sb.store.set_catalog(project_id, skus)
        current = sb.store.catalog(project_id)
        return _json({"project_id": project_id,
                      "catalog": None if current is None else sorted(current)})

    async def faults_endpoint(request: Request) -> Response:
        if request.method == "PUT":
            try:
                config = FaultConfig.model_validate_json(await request.body() or b"{}")
            except ValidationError as exc:
                return _admin_error(422, describe_error(exc))
            sb.faults.replace(config)
        return _json(sb.faults.snapshot())

    async def config(request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = await _read_json(request)
            except orjson.JSONDecodeError:
                return _admin_error(400, "body must be JSON")
            if not isinstance(body, dict) or not isinstance(body.get("idempotent"), bool):
                return _admin_error(422, 'body must be {"idempotent": true|false}')
            sb.idempotent = body["idempotent"]
        return _json({"idempotent": sb.idempotent})

    async def stats(request: Request) -> Response:
        return _json(sb.stats_body())

    async def reset(request: Request) -> Response:
        sb.stats = _Stats()
        sb.faults.reset_counts()
        return _json(sb.stats_body())

    routes = [
        *(api_route(kind) for kind in _KINDS),
        Route("/sandbox/health", health, methods=["GET"]),
        Route("/sandbox/audit", audit, methods=["GET"]),
        Route("/sandbox/audit/counts", audit_counts, methods=["GET"]),
        Route("/sandbox/balances", balances, methods=["GET"]),
        Route("/sandbox/projects/{project_id:int}/catalog", catalog, methods=["GET", "PUT"]),
        Route("/sandbox/faults", faults_endpoint, methods=["GET", "PUT"]),
        Route("/sandbox/config", config, methods=["GET", "PUT"]),
        Route("/sandbox/stats", stats, methods=["GET"]),
        # PUT as well: some callers only have a PUT-with-JSON helper.
        Route("/sandbox/reset", reset, methods=["POST", "PUT"]),
        *backpack.routes(),
        *playfab.routes(),
    ]
    return _Outermost(Starlette(routes=routes), sb)
