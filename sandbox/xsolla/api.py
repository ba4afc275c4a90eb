"""The fake Xsolla inventory API: the three server-side calls that change inventories.

HTTP Basic auth (``merchant_id:api_key``); each body is a JSON array of
operations (``schemas.xsolla``):

- ``POST /v2/project/{project_id}/inventory/purchase``
- ``POST /v2/project/{project_id}/inventory/reward``
- ``POST /v2/project/{project_id}/inventory/revoke``

-> 200 ``{"count": n, "operations": [{"user": {"id"}, "purchase"?:
{"external_purchase_id"}, "items": [{"sku", "quantity", "balance"}]}]}``,
one result per operation in request order, ``balance`` the user's balance of
that SKU right after the item. Like Xsolla, only the first 50 operations are
processed; the rest are silently ignored.

Errors are ``{"statusCode", "errorCode", "errorMessage": "[0401]: ..."}``:
401 (1501) without credentials or with another scheme, 403 (1501) with wrong
ones, 422 (1102) for a bad body (the message names the field: ``"1.purchase.
currency: ..."``), 404 (4001) ``Item with sku = '<sku>' not found`` when the
project has a catalog without that SKU, 404 (4001) ``Failed to remove this
number of items`` when a revoke would take a balance below zero. A failing
call applies nothing. Injected faults carry ``errorCode`` 0.

Xsolla has no server-side call that reads a user's inventory: its "Get the
current user's inventory" (``GET /v2/project/{project_id}/user/inventory/
items``) and virtual-currency balance are client endpoints that take the
user's JWT, so the sandbox does not imitate them; the sandbox's own read is
``GET /sandbox/balances`` (``sandbox.admin``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.common import describe_error, json_response, phrase
from sandbox.core import Api, Core
from sandbox.faults import WRONG_USER_ID
from sandbox.xsolla.operations import (
    ITEMS_OPERATIONS,
    MAX_OPERATIONS_PER_CALL,
    PURCHASES,
)
from sandbox.xsolla.store import NotEnough, XsollaStore

KINDS = ("purchase", "reward", "revoke")

# Xsolla's error codes for the cases we imitate (the "[0401]" prefix is part
# of Xsolla's message format).
_CODE_AUTH = 1501
_CODE_BAD_REQUEST = 1102
_CODE_NOT_FOUND = 4001
# Ours: marks errors the sandbox made up on purpose (Xsolla has no such code).
_CODE_INJECTED = 0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="xsolla-sandbox"'}


def xsolla_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Xsolla's error body, ``message`` behind the ``[0401]:`` prefix."""
    return json_response(
        {"statusCode": status, "errorCode": code, "errorMessage": f"[0401]: {message}"},
        status,
        headers,
    )


class XsollaApi(Api):
    """Handlers of the Xsolla inventory routes."""

    name = "xsolla"
    prefix = "/v2/"

    def __init__(
        self, core: Core, store: XsollaStore, merchant_id: str, api_key: str, idempotent: bool = False
    ) -> None:
        """Serve ``store``'s inventories to callers presenting these credentials.

        ``idempotent``: apply each (project, external_purchase_id) at most
        once (``PUT /sandbox/config`` changes it at runtime).
        """
        super().__init__(core)
        self.store = store
        self.idempotent = idempotent
        self._merchant_id = str(merchant_id).encode()
        self._api_key = api_key.encode()
        # Exact header most clients send; lets the common case skip decoding.
        self._expected_header = b"Basic " + base64.b64encode(self._merchant_id + b":" + self._api_key)

    def routes(self) -> list[Route]:
        """The three inventory routes."""
        return [
            Route(f"/v2/project/{{project_id:int}}/inventory/{kind}", self._endpoint(kind), methods=["POST"], name=kind)
            for kind in KINDS
        ]

    # ------------------------------------------------------------ the hooks

    def authorize(self, request: Request) -> Response | None:
        """None if the Basic credentials are right, else the 401/403 answer."""
        header = request.headers.get("authorization")
        # Bytes, not str: compare_digest refuses non-ASCII str, and a header
        # is whatever the client sent (Starlette decodes it as latin-1).
        if header is not None and hmac.compare_digest(header.encode("latin-1"), self._expected_header):
            return None
        if header is None:
            return xsolla_error(401, _CODE_AUTH, "Authorization failed: Authorization header not sent", _CHALLENGE)
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return xsolla_error(401, _CODE_AUTH, "Authorization failed: Basic authorization expected", _CHALLENGE)
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
        return xsolla_error(403, _CODE_AUTH, "Authorization failed: wrong merchant ID or API key")

    def fault_response(self, status: int, retry_after: int | None) -> Response:
        """An injected error, Xsolla-shaped, ``errorCode`` 0."""
        return xsolla_error(status, _CODE_INJECTED, f"{phrase(status)} (sandbox fault)")

    def misattribute(self, response: Response) -> Response:
        """The answer with every operation's ``user.id`` someone else's."""
        data = orjson.loads(response.body)
        for op in data["operations"]:
            op["user"]["id"] = WRONG_USER_ID
        return json_response(data, response.status_code)

    # ------------------------------------------------------------------ API

    def _endpoint(self, kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def apply() -> Response:
                return self._apply(request.path_params["project_id"], kind, await request.body())

            return await self.call(request, apply)

        return endpoint

    def _apply(self, project_id: int, kind: str, body: bytes) -> Response:
        adapter = PURCHASES if kind == "purchase" else ITEMS_OPERATIONS
        try:
            ops = adapter.validate_json(body)
        except ValidationError as exc:
            return xsolla_error(422, _CODE_BAD_REQUEST, describe_error(exc))
        stats = self.core.stats
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
            return xsolla_error(404, _CODE_NOT_FOUND, f"Item with sku = '{unknown[0]}' not found")
        try:
            if kind == "purchase":
                results = store.apply_purchases(project_id, ops, self.idempotent)
            elif kind == "reward":
                results = store.apply_rewards(project_id, ops)  # type: ignore[arg-type]
            else:
                results = store.apply_revokes(project_id, ops)  # type: ignore[arg-type]
        except NotEnough:
            return xsolla_error(404, _CODE_NOT_FOUND, "Failed to remove this number of items")
        stats.operations_processed += len(ops)
        return json_response({"count": len(results), "operations": results})
