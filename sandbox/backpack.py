"""The fake Xsolla Backpack API: create, list and delete a user's items.

API (``Authorization: Bearer <token>`` and ``X-HOST-ID: <host id>``):

- ``POST /web/backpack/merchants/{merchantId}/projects/{projectId}/user/{userId}/game_keys``
  and ``.../virtual_items``, ``.../virtual_currency``, ``.../promo_codes``
  (singular ``user/``): a JSON array of 1 to 100 items
  (``schemas.backpack``) -> 201 and the array of created items, in request
  order, each with a new ``item_id`` (UUID); virtual currency carries
  ``is_external_vc`` (false when the project has a Metaframe virtual currency,
  see the admin config below, else true).
- ``GET /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items?offset=&limit=``
  (plural ``users/``) -> 200 and the user's items, oldest first; no ``limit``
  (or 0) means all of them.
- ``DELETE /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items/{itemId}``
  -> 204, or 404 when the user has no such item (deleted already, never
  created, or another user's/project's).

Errors are ``{"message_id": "<uuid>", "message": "..."}``: 401 for a missing or
wrong bearer token, 400 for a missing ``X-HOST-ID``, 403 for a wrong one, 422
for a body that is not a valid array of 1..100 items (the message names the
field, as the Xsolla fake does), 400 for bad ``offset``/``limit``.

The optional ``X-Operation-Id`` request header (ours, see
``schemas.backpack.OPERATION_ID_HEADER``) is recorded with each created item
and in the audit's ``external_purchase_id`` column, so tests can count how
many times a caller's operation was applied.

Admin (no auth):

- ``GET /sandbox/backpack/items?merchant_id=&project_id=&user_id=&include_deleted=false``
  -> ``{"items": [item + {"user_id", "operation_id", "deleted"}]}``
- ``GET /sandbox/backpack/counts?kind=backpack.create&by=operation_id&project_id=``
  -> ``{"counts": {value: calls}, "rows": {value: items}}``; ``by`` is
  ``operation_id`` (default), ``item_id``, ``sku`` or ``user_id``; ``kind`` is
  ``backpack.create`` (default) or ``backpack.delete`` (a delete row carries
  the operation id its item was created with)
- ``GET|PUT /sandbox/backpack/projects/{project_id}/config`` ``{"metaframe_vc": bool}``
"""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.common import json_response, query_bool, query_int
from sandbox.operations import describe_error
from schemas.backpack import (
    CREATE_PATHS,
    CREATE_REQUESTS,
    HOST_ID_HEADER,
    MAX_ID_LENGTH,
    OPERATION_ID_HEADER,
    ItemType,
)

if TYPE_CHECKING:
    from sandbox.app import _Sandbox

# For local use only; real deployments pass their own (server.py flags/env).
DEFAULT_BACKPACK_TOKEN = "sandbox-backpack-token"
DEFAULT_BACKPACK_HOST_ID = "00000000-0000-4000-8000-00000000b9c1"

# Our assumption: the reference does not list item_status values; a freshly
# created, not yet received item is "new".
ITEM_STATUS_NEW = "new"

_PREFIX = "/web/backpack/merchants/{merchant_id:int}/projects/{project_id:int}"
_COUNT_COLUMNS = {
    "operation_id": "external_purchase_id",
    "item_id": "item_id",
    "sku": "sku",
    "user_id": "user_id",
}
_COUNT_KINDS = ("backpack.create", "backpack.delete")


def backpack_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Backpack's error body: ``{"message_id", "message"}``."""
    return json_response({"message_id": str(uuid.uuid4()), "message": message}, status, headers)


def _fault(status: int, retry_after: int | None) -> Response:
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return backpack_error(status, f"HTTP {status} (sandbox fault)", headers)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BackpackApi:
    """Handlers of the Backpack routes over one ``_Sandbox``."""

    def __init__(self, sb: _Sandbox, token: str, host_id: str) -> None:
        self.sb = sb
        self._token = token.encode()
        self._host_id = host_id.encode()

    # ------------------------------------------------------------------ auth

    def authorize(self, request: Request) -> Response | None:
        header = request.headers.get("authorization")
        unauthorized = {"WWW-Authenticate": 'Bearer realm="backpack-sandbox"'}
        if header is None:
            return backpack_error(401, "Authorization header not sent", unauthorized)
        scheme, _, token = header.partition(" ")
        # Bytes: compare_digest refuses non-ASCII str; headers are latin-1.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("latin-1"), self._token
        ):
            return backpack_error(401, "Invalid bearer token", unauthorized)
        host_id = request.headers.get(HOST_ID_HEADER)
        if host_id is None:
            return backpack_error(400, f"{HOST_ID_HEADER} header is required")
        if not hmac.compare_digest(host_id.strip().encode("latin-1"), self._host_id):
            return backpack_error(403, f"Wrong {HOST_ID_HEADER}")
        return None

    # ------------------------------------------------------------------- API

    async def create(self, request: Request, item_type: ItemType) -> Response:
        async def apply() -> Response:
            return self._create(request, item_type, await request.body())

        return await self.sb.call(request, "backpack", self.authorize, _fault, apply)

    def _create(self, request: Request, item_type: ItemType, body: bytes) -> Response:
        params = request.path_params
        user_id: str = params["user_id"]
        if len(user_id) > MAX_ID_LENGTH:
            return backpack_error(422, f"userId: at most {MAX_ID_LENGTH} characters")
        try:
            items = CREATE_REQUESTS[item_type].validate_json(body)
        except ValidationError as exc:
            return backpack_error(422, describe_error(exc))
        merchant_id: int = params["merchant_id"]
        project_id: int = params["project_id"]
        store = self.sb.store
        external_vc = not store.bp_metaframe_vc(project_id)
        now = _now()
        stored: list[dict[str, Any]] = []
        created: list[dict[str, Any]] = []
        for item in items:
            full: dict[str, Any] = {
                "item_id": str(uuid.uuid4()),
                "item_sku": item.item_sku,
                "item_name": item.item_name,
                "image_url": item.image_url,
                "image_proxy_url": None,
                "description": item.description,
                "project_id": project_id,
                "merchant_id": merchant_id,
                "item_type": item_type.value,
                "price": None,
                "currency": None,
                "promo_code": None,
                "code": None,
                "game_name": item.game_name,
                "external_game_id": item.external_game_id,
                "created_at": now,
                "item_status": ITEM_STATUS_NEW,
                "quantity": None,
                "is_external_vc": None,
                "platform": getattr(item, "platform", None),
            }
            # The create answer: the fields of Xsolla's sample for this type.
            out = {k: full[k] for k in (
                "item_id", "description", "image_url", "item_sku", "game_name",
                "external_game_id", "item_type", "created_at", "item_status", "item_name",
            )}
            if item_type is ItemType.game_key:
                full["code"] = out["code"] = item.code
            elif item_type is ItemType.promo_code:
                full["promo_code"] = out["promo_code"] = item.promo_code
            elif item_type is ItemType.virtual_currency:
                for key, value in (("quantity", item.quantity), ("price", item.price),
                                   ("currency", item.currency), ("is_external_vc", external_vc)):
                    full[key] = out[key] = value
            if item_type is not ItemType.promo_code:
                out["platform"] = full["platform"]
            out["project_id"] = project_id
            out["merchant_id"] = merchant_id
            stored.append(full)
            created.append(out)
        operation_id = request.headers.get(OPERATION_ID_HEADER) or None
        store.bp_create(merchant_id, project_id, user_id, stored, operation_id)
        self.sb.stats.items_by_api["backpack"] += len(stored)
        return json_response(created, 201)

    async def list_items(self, request: Request) -> Response:
        async def apply() -> Response:
            try:
                offset = query_int(request, "offset", 0) or 0
                limit = query_int(request, "limit", None) or None
            except ValueError:
                return backpack_error(400, "offset and limit must be integers")
            if offset < 0 or (limit is not None and limit < 0):
                return backpack_error(400, "offset and limit must not be negative")
            params = request.path_params
            return json_response(self.sb.store.bp_list(
                params["merchant_id"], params["project_id"], params["user_id"], offset, limit,
            ))

        return await self.sb.call(request, "backpack", self.authorize, _fault, apply)

    async def delete(self, request: Request) -> Response:
        async def apply() -> Response:
            params = request.path_params
            if not self.sb.store.bp_delete(
                params["merchant_id"], params["project_id"], params["user_id"], params["item_id"],
            ):
                return backpack_error(404, "Item not found")
            return Response(status_code=204)

        return await self.sb.call(request, "backpack", self.authorize, _fault, apply)

    # ----------------------------------------------------------------- admin

    async def admin_items(self, request: Request) -> Response:
        try:
            merchant_id = query_int(request, "merchant_id", None)
            project_id = query_int(request, "project_id", None)
            include_deleted = query_bool(request, "include_deleted")
        except ValueError:
            return json_response({"error": "merchant_id and project_id must be integers, "
                                           "include_deleted true or false"}, 400)
        user_id = request.query_params.get("user_id") or None
        return json_response({"items": self.sb.store.bp_items(
            merchant_id, project_id, user_id, include_deleted,
        )})

    async def admin_counts(self, request: Request) -> Response:
        try:
            project_id = query_int(request, "project_id", None)
        except ValueError:
            return json_response({"error": "project_id must be an integer"}, 400)
        kind = request.query_params.get("kind", "backpack.create")
        by = request.query_params.get("by", "operation_id")
        if kind not in _COUNT_KINDS or by not in _COUNT_COLUMNS:
            return json_response({"error": f"kind must be one of {', '.join(_COUNT_KINDS)}; "
                                           f"by one of {', '.join(_COUNT_COLUMNS)}"}, 400)
        got = self.sb.store.audit_counts_by(kind, _COUNT_COLUMNS[by], project_id)
        return json_response({"counts": got["calls"], "rows": got["rows"]})

    async def admin_project_config(self, request: Request) -> Response:
        project_id: int = request.path_params["project_id"]
        if request.method == "PUT":
            try:
                body = orjson.loads(await request.body() or b"{}")
            except orjson.JSONDecodeError:
                return json_response({"error": "body must be JSON"}, 400)
            if not isinstance(body, dict) or set(body) != {"metaframe_vc"} or not isinstance(
                body["metaframe_vc"], bool
            ):
                return json_response({"error": 'body must be {"metaframe_vc": true|false}'}, 422)
            self.sb.store.bp_set_metaframe_vc(project_id, body["metaframe_vc"])
        return json_response({"project_id": project_id,
                              "metaframe_vc": self.sb.store.bp_metaframe_vc(project_id)})

    def routes(self) -> list[Route]:
        out: list[Route] = []
        for segment, item_type in CREATE_PATHS.items():
            async def endpoint(request: Request, _type: ItemType = item_type) -> Response:
                return await self.create(request, _type)

            out.append(Route(f"{_PREFIX}/user/{{user_id}}/{segment}", endpoint, methods=["POST"],
                             name=f"backpack_{segment}"))
        out += [
            Route(f"{_PREFIX}/users/{{user_id}}/items", self.list_items, methods=["GET"]),
            Route(f"{_PREFIX}/users/{{user_id}}/items/{{item_id}}", self.delete, methods=["DELETE"]),
            Route("/sandbox/backpack/items", self.admin_items, methods=["GET"]),
            Route("/sandbox/backpack/counts", self.admin_counts, methods=["GET"]),
            Route("/sandbox/backpack/projects/{project_id:int}/config", self.admin_project_config,
                  methods=["GET", "PUT"]),
        ]
        return out
