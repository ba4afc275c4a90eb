"""The fake Xsolla Backpack API: create, list and delete a user's items.

API (``Authorization: Bearer <token>`` and ``X-HOST-ID: <host id>``):

- ``POST /web/backpack/merchants/{merchantId}/projects/{projectId}/user/{userId}/game_keys``
  and ``.../virtual_items``, ``.../virtual_currency``, ``.../promo_codes``
  (singular ``user/``): a JSON array of 1 to 100 items
  (``schemas.backpack``) -> 201 and the array of created items, in request
  order, each with a new ``item_id`` (UUID); virtual currency carries
  ``is_external_vc`` (false when the project has a Metaframe virtual currency,
  see ``/sandbox/backpack/projects/{project_id}/config`` in ``sandbox.admin``,
  else true).
- ``GET /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items?offset=&limit=``
  (plural ``users/``) -> 200 and the user's items, oldest first; no ``limit``
  (or 0) means all of them.
- ``DELETE /web/backpack/merchants/{merchantId}/projects/{projectId}/users/{userId}/items/{itemId}``
  -> 204, or 404 when the user has no such item (deleted already, never
  created, or another user's/project's).

Errors are ``{"message_id": "<uuid>", "message": "..."}``: 401 for a missing or
wrong bearer token, 400 for a missing ``X-HOST-ID``, 403 for a wrong one, 422
for a body that is not a valid array of 1..100 items (the message names the
field, as the Xsolla fake does), 400 for bad ``offset``/``limit``. Injected
faults say ``HTTP <status> (sandbox fault)``.

The optional ``X-Operation-Id`` request header (ours, see
``schemas.backpack.OPERATION_ID_HEADER``) is recorded with each created item
and in the audit's ``external_purchase_id`` column, so tests can count how
many times a caller's operation was applied.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.backpack.store import BackpackStore
from sandbox.common import describe_error, json_response, query_int
from sandbox.core import Api, Core
from schemas.backpack import (
    CREATE_PATHS,
    CREATE_REQUESTS,
    HOST_ID_HEADER,
    MAX_ID_LENGTH,
    OPERATION_ID_HEADER,
    ItemType,
)

# For local use only; real deployments pass their own (server.py flags/env).
DEFAULT_BACKPACK_TOKEN = "sandbox-backpack-token"
DEFAULT_BACKPACK_HOST_ID = "00000000-0000-4000-8000-00000000b9c1"

# Our assumption: the reference does not list item_status values; a freshly
# created, not yet received item is "new".
ITEM_STATUS_NEW = "new"

_PREFIX = "/web/backpack/merchants/{merchant_id:int}/projects/{project_id:int}"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="backpack-sandbox"'}
# The create answer: the fields of Xsolla's sample for every type ...
_ANSWERED = (
    "item_id",
    "description",
    "image_url",
    "item_sku",
    "game_name",
    "external_game_id",
    "item_type",
    "created_at",
    "item_status",
    "item_name",
)
# ... and those of one type only.
_ANSWERED_BY_TYPE = {
    ItemType.game_key: ("code",),
    ItemType.promo_code: ("promo_code",),
    ItemType.virtual_currency: ("quantity", "price", "currency", "is_external_vc"),
}


def backpack_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Backpack's error body: ``{"message_id", "message"}``."""
    return json_response({"message_id": str(uuid.uuid4()), "message": message}, status, headers)


class BackpackApi(Api):
    """Handlers of the Backpack routes."""

    name = "backpack"
    prefix = "/web/backpack/"

    def __init__(self, core: Core, store: BackpackStore, token: str, host_id: str) -> None:
        """Serve ``store``'s items to callers sending ``token`` and ``host_id``."""
        super().__init__(core)
        self.store = store
        self._token = token.encode()
        self._host_id = host_id.encode()

    def routes(self) -> list[Route]:
        """One create route per item type, then list and delete."""
        out = [
            Route(
                f"{_PREFIX}/user/{{user_id}}/{segment}",
                self._create_endpoint(item_type),
                methods=["POST"],
                name=f"backpack_{segment}",
            )
            for segment, item_type in CREATE_PATHS.items()
        ]
        out += [
            Route(f"{_PREFIX}/users/{{user_id}}/items", self.list_items, methods=["GET"]),
            Route(f"{_PREFIX}/users/{{user_id}}/items/{{item_id}}", self.delete, methods=["DELETE"]),
        ]
        return out

    # ------------------------------------------------------------ the hooks

    def authorize(self, request: Request) -> Response | None:
        """None if the bearer token and host id are right, else the refusal."""
        header = request.headers.get("authorization")
        if header is None:
            return backpack_error(401, "Authorization header not sent", _CHALLENGE)
        scheme, _, token = header.partition(" ")
        # Bytes: compare_digest refuses non-ASCII str; headers are latin-1.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self._token):
            return backpack_error(401, "Invalid bearer token", _CHALLENGE)
        host_id = request.headers.get(HOST_ID_HEADER)
        if host_id is None:
            return backpack_error(400, f"{HOST_ID_HEADER} header is required")
        if not hmac.compare_digest(host_id.strip().encode("latin-1"), self._host_id):
            return backpack_error(403, f"Wrong {HOST_ID_HEADER}")
        return None

    def fault_response(self, status: int, retry_after: int | None) -> Response:
        """An injected error, Backpack-shaped."""
        return backpack_error(status, f"HTTP {status} (sandbox fault)")

    # ------------------------------------------------------------------ API

    def _create_endpoint(self, item_type: ItemType) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def apply() -> Response:
                return self._create(request, item_type, await request.body())

            return await self.call(request, apply)

        return endpoint

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
        external_vc = not self.store.metaframe_vc(project_id)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        stored = [_stored_item(item, item_type, merchant_id, project_id, external_vc, now) for item in items]
        operation_id = request.headers.get(OPERATION_ID_HEADER) or None
        self.store.create(merchant_id, project_id, user_id, stored, operation_id)
        self.core.stats.items_by_api["backpack"] += len(stored)
        return json_response([_answered(full, item_type) for full in stored], 201)

    async def list_items(self, request: Request) -> Response:
        """``GET .../users/{userId}/items``."""

        async def apply() -> Response:
            try:
                offset = query_int(request, "offset", 0) or 0
                limit = query_int(request, "limit", None) or None
            except ValueError:
                return backpack_error(400, "offset and limit must be integers")
            if offset < 0 or (limit is not None and limit < 0):
                return backpack_error(400, "offset and limit must not be negative")
            params = request.path_params
            return json_response(
                self.store.user_items(
                    params["merchant_id"],
                    params["project_id"],
                    params["user_id"],
                    offset,
                    limit,
                )
            )

        return await self.call(request, apply)

    async def delete(self, request: Request) -> Response:
        """``DELETE .../users/{userId}/items/{itemId}``."""

        async def apply() -> Response:
            params = request.path_params
            if not self.store.delete(
                params["merchant_id"],
                params["project_id"],
                params["user_id"],
                params["item_id"],
            ):
                return backpack_error(404, "Item not found")
            return Response(status_code=204)

        return await self.call(request, apply)


def _stored_item(
    item: BaseModel, item_type: ItemType, merchant_id: int, project_id: int, external_vc: bool, now: str
) -> dict[str, Any]:
    """The item as the list call will return it."""
    fields = item.model_dump()
    full: dict[str, Any] = {
        "item_id": str(uuid.uuid4()),
        "item_sku": fields["item_sku"],
        "item_name": fields["item_name"],
        "image_url": fields["image_url"],
        "image_proxy_url": None,
        "description": fields["description"],
        "project_id": project_id,
        "merchant_id": merchant_id,
        "item_type": item_type.value,
        "price": None,
        "currency": None,
        "promo_code": None,
        "code": None,
        "game_name": fields["game_name"],
        "external_game_id": fields["external_game_id"],
        "created_at": now,
        "item_status": ITEM_STATUS_NEW,
        "quantity": None,
        "is_external_vc": None,
        "platform": fields.get("platform"),
    }
    for key in _ANSWERED_BY_TYPE.get(item_type, ()):
        full[key] = external_vc if key == "is_external_vc" else fields[key]
    return full


def _answered(full: dict[str, Any], item_type: ItemType) -> dict[str, Any]:
    """The create call's answer for one stored item."""
    out = {k: full[k] for k in _ANSWERED}
    for key in _ANSWERED_BY_TYPE.get(item_type, ()):
        out[key] = full[key]
    if item_type is not ItemType.promo_code:
        out["platform"] = full["platform"]
    out["project_id"] = full["project_id"]
    out["merchant_id"] = full["merchant_id"]
    return out
