"""The fake PlayFab Admin API (legacy economy) for one title.

Mounted under ``/playfab`` so a worker configures the base URL
``http://host:port/playfab`` where it would use ``https://{titleId}.playfabapi.com``.
Every call is ``POST`` with a JSON object body and ``X-SecretKey``:

- ``/playfab/Admin/GrantItemsToUsers`` ``{"ItemGrants": [{"PlayFabId", "ItemId",
  "Annotation"?, "CharacterId"?, "Data"?, "KeysToRemove"?}], "CatalogVersion"?,
  "CustomTags"?}`` -> ``{"code": 200, "status": "OK", "data": {"ItemGrantResults":
  [GrantedItemInstance]}}``. The results come back SHUFFLED (PlayFab: "the order
  of the items in the response may not match the order of items in the
  request"): deterministic for a given config seed and request body, and for
  two or more results never in request order. Each granted item is
  ``{"ItemInstanceId", "PlayFabId", "ItemId", "Annotation"?, "CharacterId"?,
  "CatalogVersion"?, "ItemClass"?, "DisplayName"?, "CustomData"?,
  "PurchaseDate", "Result": true}``. When a catalog is configured, an ItemId
  not in it is not granted and reported ``{"PlayFabId", "ItemId",
  "Annotation"?, "CharacterId"?, "Result": false}`` while the other items of
  the call are granted. Any unknown PlayFabId fails the whole call (nothing
  granted): HTTP 400 ``AccountNotFound`` (1001), ``errorDetails:
  {"PlayFabId": [<unknown ids>]}``.
- ``/playfab/Admin/GetUserInventory`` ``{"PlayFabId", "CustomTags"?}`` ->
  ``data: {"PlayFabId", "Inventory": [ItemInstance], "VirtualCurrency": {code:
  amount}, "VirtualCurrencyRechargeTimes": {}}``; the inventory holds the
  player's own (not character) unrevoked instances, oldest first.
- ``/playfab/Admin/RevokeInventoryItems`` ``{"Items": [{"PlayFabId",
  "ItemInstanceId", "CharacterId"?}]}`` (1..25 items, more is 400
  ``InvalidParams``) -> ``data: {"Errors": [{"Error": "ItemNotFound" |
  "AccountNotFound", "Item": {...the item as sent...}}]}``, ``Errors`` empty
  when all were revoked.

Errors are PlayFab's ``ApiErrorWrapper`` ``{"code", "status", "error",
"errorCode", "errorMessage", "errorDetails"?}``: 401 ``NotAuthenticated``
(1074) without ``X-SecretKey``, 403 ``NotAuthorized`` (1089) with a wrong one,
400 ``InvalidParams`` (1000) for a bad body (``errorDetails``: field path ->
messages), 400 ``CatalogNotConfigured`` (1218) and ``ProductDisabledForTitle``
(1609) per the title state. Injected faults: 429 ``APIRequestLimitExceeded``
(1130, with ``Retry-After`` and ``retryAfterSeconds``), 503
``ServiceUnavailable`` (1123), 500 ``InternalServerError`` (1110), 502/504
``DownstreamServiceUnavailable`` (1127), any other status ``UnknownError``.

Players must exist: create them with ``POST /sandbox/playfab/players``, or set
``auto_create_players`` (then any PlayFabId not listed in ``unknown_players``
is created on its first grant and counts as existing everywhere).

Admin (no auth):

- ``GET|PUT /sandbox/playfab/config``: ``{"shuffle_results": true,
  "shuffle_seed": 0, "auto_create_players": false, "unknown_players": [],
  "title_state": "ok" | "catalog_not_configured" | "product_disabled"}``; PUT
  replaces the whole config (missing keys get these defaults)
- ``GET|PUT /sandbox/playfab/catalog``: ``{"CatalogVersion": "main", "Catalog":
  ["item_id" | {"ItemId", "ItemClass"?, "DisplayName"?, "Bundle"?:
  {"BundledVirtualCurrencies": {code: amount}}}]}``, or ``null`` for no catalog
  (then every ItemId exists). A CatalogVersion in a grant that differs from
  the configured one fails with ``CatalogNotConfigured``. Granting an item
  whose Bundle has virtual currencies adds them to the player.
- ``GET|POST /sandbox/playfab/players``: POST ``{"PlayFabIds": [...],
  "VirtualCurrency"?: {code: amount}}`` creates players (sets those balances)
- ``GET /sandbox/playfab/inventory?player=ID`` -> ``{"PlayFabId", "Inventory":
  [...with CharacterId...], "VirtualCurrency": {...}, "exists": bool}``
  (character items included)
- ``GET /sandbox/playfab/counts?kind=playfab.grant&by=annotation`` ->
  ``{"counts": {value: applying calls}, "rows": {value: instances}}``; ``by``
  is ``annotation`` (default), ``item_id`` (the ItemInstanceId), ``sku`` (the
  ItemId) or ``user_id`` (the PlayFabId); ``kind`` ``playfab.grant`` or
  ``playfab.revoke`` (a revoke row carries its instance's Annotation)

All grants and revokes are audited in the shared audit table with
``project_id`` 0.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.common import json_response
from sandbox.faults import WRONG_USER_ID
from schemas.playfab import (
    MAX_ID_LENGTH,
    GetUserInventoryRequest,
    GrantItemsToUsersRequest,
    PlayFabErrorCode,
    RevokeInventoryItemsRequest,
)

if TYPE_CHECKING:
    from sandbox.app import _Sandbox

# For local use only; real deployments pass their own (server.py flags/env).
DEFAULT_PLAYFAB_SECRET_KEY = "sandbox-playfab-secret-key"
SECRET_KEY_HEADER = "X-SecretKey"
_CATALOG_KEY = "playfab.catalog"
_COUNT_COLUMNS = {
    "annotation": "external_purchase_id",
    "item_id": "item_id",
    "sku": "sku",
    "user_id": "user_id",
}
_COUNT_KINDS = ("playfab.grant", "playfab.revoke")
# .NET HttpStatusCode names, which PlayFab's "status" carries.
_STATUS_NAMES = {
    200: "OK", 400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
    503: "ServiceUnavailable", 504: "GatewayTimeout",
}
_FAULT_CODES = {
    429: PlayFabErrorCode.APIRequestLimitExceeded,
    500: PlayFabErrorCode.InternalServerError,
    502: PlayFabErrorCode.DownstreamServiceUnavailable,
    503: PlayFabErrorCode.ServiceUnavailable,
    504: PlayFabErrorCode.DownstreamServiceUnavailable,
}


class PlayFabConfig(BaseModel):
    """Title behaviour the tests control (``PUT /sandbox/playfab/config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shuffle_results: bool = True
    shuffle_seed: int = 0
    auto_create_players: bool = False
    unknown_players: list[str] = Field(default_factory=list)
    title_state: Literal["ok", "catalog_not_configured", "product_disabled"] = "ok"


class _Bundle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    BundledVirtualCurrencies: dict[Annotated[str, Field(min_length=1, max_length=16)],
                                   Annotated[int, Field(ge=0)]] | None = None


class CatalogItem(BaseModel):
    """The part of a PlayFab CatalogItem the sandbox uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ItemId: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    ItemClass: str | None = None
    DisplayName: str | None = None
    Bundle: _Bundle | None = None


class CatalogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    CatalogVersion: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] = "main"
    Catalog: list[CatalogItem | Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]]

    def by_id(self) -> dict[str, CatalogItem]:
        return {
            (c.ItemId if isinstance(c, CatalogItem) else c):
            (c if isinstance(c, CatalogItem) else CatalogItem(ItemId=c))
            for c in self.Catalog
        }


_CATALOG_BODY: TypeAdapter[CatalogConfig | None] = TypeAdapter(CatalogConfig | None)


class _PlayersBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    PlayFabIds: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]],
                          Field(min_length=1)]
    VirtualCurrency: dict[str, Annotated[int, Field(ge=0)]] | None = None


def playfab_error(
    http: int, code: PlayFabErrorCode, message: str,
    details: dict[str, list[str]] | None = None, retry_after: int | None = None,
) -> Response:
    """PlayFab's ApiErrorWrapper."""
    body: dict[str, Any] = {
        "code": http,
        "status": _STATUS_NAMES.get(http) or _phrase_name(http),
        "error": code.name,
        "errorCode": int(code),
        "errorMessage": message,
    }
    if details:
        body["errorDetails"] = details
    headers = None
    if retry_after is not None:
        body["retryAfterSeconds"] = retry_after
        headers = {"Retry-After": str(retry_after)}
    return json_response(body, http, headers)


def _phrase_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"HTTP{status}"


def _success(data: dict[str, Any]) -> Response:
    return json_response({"code": 200, "status": "OK", "data": data})


def _fault(status: int, retry_after: int | None) -> Response:
    code = _FAULT_CODES.get(status, PlayFabErrorCode.UnknownError)
    return playfab_error(status, code, f"{_phrase_name(status)} (sandbox fault)",
                         retry_after=retry_after if status == 429 else None)


def _wrong_user(response: Response) -> Response:
    data = orjson.loads(response.body)
    for result in data["data"]["ItemGrantResults"]:
        result["PlayFabId"] = WRONG_USER_ID
    return json_response(data, response.status_code)


def _invalid_params(exc: ValidationError | None, message: str = "Invalid input parameters") -> Response:
    details: dict[str, list[str]] = {}
    if exc is not None:
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            path = ""
            for part in err["loc"]:
                path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            reason = err["msg"]
            reason = reason.removeprefix("Value error, ")
            details.setdefault(path or "Request", []).append(reason)
    return playfab_error(400, PlayFabErrorCode.InvalidParams, message, details or None)


def _purchase_date() -> str:
    # PlayFab's timestamps: ISO 8601 UTC with milliseconds and a "Z".
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _shuffled(n: int, seed: int, body: bytes) -> list[int]:
    """A permutation of range(n), fixed by (seed, body), never the identity
    for n >= 2 (so a client relying on request order always notices)."""
    order = list(range(n))
    if n < 2:
        return order
    digest = hashlib.sha256(str(seed).encode() + b"\0" + body).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    if order == list(range(n)):
        order = order[1:] + order[:1]
    return order


class PlayFabApi:
    """Handlers of the PlayFab routes over one ``_Sandbox``."""

    def __init__(self, sb: _Sandbox, secret_key: str, config: PlayFabConfig | None = None) -> None:
        self.sb = sb
        self._secret = secret_key.encode()
        self.config = config or PlayFabConfig()
        raw = sb.store.get_json(_CATALOG_KEY)
        self._set_catalog(None if raw is None else CatalogConfig.model_validate(raw))

    def _set_catalog(self, catalog: CatalogConfig | None) -> None:
        self.catalog = catalog
        self._catalog_items = None if catalog is None else catalog.by_id()

    # ------------------------------------------------------------------ auth

    def authorize(self, request: Request) -> Response | None:
        key = request.headers.get(SECRET_KEY_HEADER)
        if key is None:
            return playfab_error(401, PlayFabErrorCode.NotAuthenticated,
                                 "This API method does not allow anonymous callers.")
        if not hmac.compare_digest(key.strip().encode("latin-1"), self._secret):
            return playfab_error(403, PlayFabErrorCode.NotAuthorized, "Invalid X-SecretKey header.")
        return None

    # ----------------------------------------------------------------- state

    def _players(self, ids: set[str]) -> tuple[set[str], set[str]]:
        """(existing, to_create) among ``ids``; the rest are unknown."""
        existing = self.sb.store.pf_existing_players(ids)
        to_create: set[str] = set()
        if self.config.auto_create_players:
            unknown = set(self.config.unknown_players)
            to_create = {pid for pid in ids - existing if pid not in unknown}
        return existing, to_create

    def _title_refusal(self, grant: bool) -> Response | None:
        state = self.config.title_state
        if state == "product_disabled":
            return playfab_error(400, PlayFabErrorCode.ProductDisabledForTitle,
                                 "The legacy economy is disabled for this title.")
        if state == "catalog_not_configured" and grant:
            return playfab_error(400, PlayFabErrorCode.CatalogNotConfigured,
                                 "No catalog is configured for this title.")
        return None

    # ------------------------------------------------------------------- API

    async def _call(self, request: Request, handler: Any,
                    misattribute: Callable[[Response], Response] | None = None) -> Response:
        async def apply() -> Response:
            return handler(await request.body())

        return await self.sb.call(request, "playfab", self.authorize, _fault, apply, misattribute)

    async def grant_items_to_users(self, request: Request) -> Response:
        return await self._call(request, self._grant, _wrong_user)

    async def get_user_inventory(self, request: Request) -> Response:
        return await self._call(request, self._inventory)

    async def revoke_inventory_items(self, request: Request) -> Response:
        return await self._call(request, self._revoke)

    def _grant(self, body: bytes) -> Response:
        try:
            req = GrantItemsToUsersRequest.model_validate_json(body)
        except ValidationError as exc:
            return _invalid_params(exc)
        self.sb.stats.items_by_api["playfab"] += len(req.ItemGrants)
        refused = self._title_refusal(grant=True)
        if refused is not None:
            return refused
        catalog = self.catalog
        items = self._catalog_items
        if catalog is not None and req.CatalogVersion not in (None, catalog.CatalogVersion):
            return playfab_error(400, PlayFabErrorCode.CatalogNotConfigured,
                                 f"Catalog version {req.CatalogVersion!r} is not configured.",
                                 {"CatalogVersion": [req.CatalogVersion or ""]})
        ids = {g.PlayFabId for g in req.ItemGrants}
        existing, to_create = self._players(ids)
        unknown = sorted(ids - existing - to_create)
        if unknown:
            return playfab_error(400, PlayFabErrorCode.AccountNotFound, "User not found",
                                 {"PlayFabId": unknown})
        version = req.CatalogVersion or (catalog.CatalogVersion if catalog else None)
        now = _purchase_date()
        results: list[dict[str, Any] | None] = [None] * len(req.ItemGrants)
        to_store: list[tuple[int, dict[str, Any]]] = []
        for index, g in enumerate(req.ItemGrants):
            base: dict[str, Any] = {"PlayFabId": g.PlayFabId, "ItemId": g.ItemId}
            if g.Annotation is not None:
                base["Annotation"] = g.Annotation
            if g.CharacterId is not None:
                base["CharacterId"] = g.CharacterId
            entry = items.get(g.ItemId) if items is not None else CatalogItem(ItemId=g.ItemId)
            if entry is None:
                # Not in the title's catalog: this item alone fails.
                results[index] = {**base, "Result": False}
                continue
            instance: dict[str, Any] = {"ItemId": g.ItemId, "PurchaseDate": now}
            for key, value in (("Annotation", g.Annotation), ("CatalogVersion", version),
                               ("ItemClass", entry.ItemClass), ("DisplayName", entry.DisplayName)):
                if value is not None:
                    instance[key] = value
            custom = {k: v for k, v in (g.Data or {}).items()
                      if v is not None and k not in set(g.KeysToRemove or ())}
            if custom:
                instance["CustomData"] = custom
            currencies = (entry.Bundle.BundledVirtualCurrencies or {}) if entry.Bundle else {}
            to_store.append((index, {
                "playfab_id": g.PlayFabId, "character_id": g.CharacterId, "item_id": g.ItemId,
                "annotation": g.Annotation, "body": instance, "currencies": currencies,
            }))
        instance_ids = self.sb.store.pf_grant([grant for _, grant in to_store], sorted(to_create))
        for (index, grant), instance_id in zip(to_store, instance_ids):
            result = dict(grant["body"], ItemInstanceId=instance_id, PlayFabId=grant["playfab_id"],
                          Result=True)
            if grant["character_id"] is not None:
                result["CharacterId"] = grant["character_id"]
            results[index] = result
        ordered = results
        if self.config.shuffle_results:
            ordered = [results[i] for i in _shuffled(len(results), self.config.shuffle_seed, body)]
        return _success({"ItemGrantResults": ordered})

    def _inventory(self, body: bytes) -> Response:
        try:
            req = GetUserInventoryRequest.model_validate_json(body)
        except ValidationError as exc:
            return _invalid_params(exc)
        refused = self._title_refusal(grant=False)
        if refused is not None:
            return refused
        existing, to_create = self._players({req.PlayFabId})
        if not existing and not to_create:
            return playfab_error(400, PlayFabErrorCode.AccountNotFound, "User not found",
                                 {"PlayFabId": [req.PlayFabId]})
        return _success(self._inventory_data(req.PlayFabId, characters=False))

    def _inventory_data(self, playfab_id: str, characters: bool) -> dict[str, Any]:
        store = self.sb.store
        currencies = {code: 0 for code in self._title_currencies()}
        currencies.update(store.pf_currencies(playfab_id))
        return {
            "Inventory": store.pf_inventory(playfab_id, characters=characters),
            "PlayFabId": playfab_id,
            "VirtualCurrency": currencies,
            "VirtualCurrencyRechargeTimes": {},
        }

    def _title_currencies(self) -> list[str]:
        # The title's currencies as far as the sandbox knows them: those its
        # catalog bundles grant (PlayFab lists every title currency, at 0).
        return sorted({code for item in (self._catalog_items or {}).values() if item.Bundle
                       for code in (item.Bundle.BundledVirtualCurrencies or {})})

    def _revoke(self, body: bytes) -> Response:
        try:
            req = RevokeInventoryItemsRequest.model_validate_json(body)
        except ValidationError as exc:
            return _invalid_params(exc)
        self.sb.stats.items_by_api["playfab"] += len(req.Items)
        refused = self._title_refusal(grant=False)
        if refused is not None:
            return refused
        ids = {item.PlayFabId for item in req.Items}
        existing, to_create = self._players(ids)
        errors = self.sb.store.pf_revoke(
            [(i.PlayFabId, i.ItemInstanceId, i.CharacterId) for i in req.Items],
            existing | to_create,
        )
        return _success({"Errors": [
            {"Error": error, "Item": req.Items[index].model_dump(exclude_none=True)}
            for index, error in errors
        ]})

    # ----------------------------------------------------------------- admin

    async def admin_config(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.config = PlayFabConfig.model_validate_json(await request.body() or b"{}")
            except ValidationError as exc:
                return json_response({"error": str(exc.errors(include_url=False)[0]["msg"]),
                                      "loc": list(exc.errors()[0]["loc"])}, 422)
        return json_response(self.config.model_dump())

    async def admin_catalog(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                catalog = _CATALOG_BODY.validate_json(await request.body() or b"null")
            except ValidationError as exc:
                return json_response({"error": str(exc.errors(include_url=False)[0]["msg"]),
                                      "loc": list(exc.errors()[0]["loc"])}, 422)
            self.sb.store.set_json(_CATALOG_KEY, None if catalog is None else catalog.model_dump(
                exclude_none=True))
            self._set_catalog(catalog)
        if self.catalog is None:
            return json_response(None)
        return json_response(self.catalog.model_dump(exclude_none=True))

    async def admin_players(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = _PlayersBody.model_validate_json(await request.body() or b"{}")
            except ValidationError as exc:
                return json_response({"error": str(exc.errors(include_url=False)[0]["msg"]),
                                      "loc": list(exc.errors()[0]["loc"])}, 422)
            self.sb.store.pf_create_players(body.PlayFabIds, body.VirtualCurrency)
        return json_response({"players": self.sb.store.pf_players()})

    async def admin_inventory(self, request: Request) -> Response:
        player = request.query_params.get("player")
        if not player:
            return json_response({"error": "give ?player=PlayFabId"}, 400)
        data = self._inventory_data(player, characters=True)
        data["exists"] = bool(self.sb.store.pf_existing_players({player}))
        return json_response(data)

    async def admin_counts(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "playfab.grant")
        by = request.query_params.get("by", "annotation")
        if kind not in _COUNT_KINDS or by not in _COUNT_COLUMNS:
            return json_response({"error": f"kind must be one of {', '.join(_COUNT_KINDS)}; "
                                           f"by one of {', '.join(_COUNT_COLUMNS)}"}, 400)
        got = self.sb.store.audit_counts_by(kind, _COUNT_COLUMNS[by])
        return json_response({"counts": got["calls"], "rows": got["rows"]})

    def routes(self) -> list[Route]:
        return [
            Route("/playfab/Admin/GrantItemsToUsers", self.grant_items_to_users, methods=["POST"]),
            Route("/playfab/Admin/GetUserInventory", self.get_user_inventory, methods=["POST"]),
            Route("/playfab/Admin/RevokeInventoryItems", self.revoke_inventory_items,
                  methods=["POST"]),
            Route("/sandbox/playfab/config", self.admin_config, methods=["GET", "PUT"]),
            Route("/sandbox/playfab/catalog", self.admin_catalog, methods=["GET", "PUT"]),
            Route("/sandbox/playfab/players", self.admin_players, methods=["GET", "POST"]),
            Route("/sandbox/playfab/inventory", self.admin_inventory, methods=["GET"]),
            Route("/sandbox/playfab/counts", self.admin_counts, methods=["GET"]),
        ]


__all__ = ["DEFAULT_PLAYFAB_SECRET_KEY", "CatalogConfig", "PlayFabApi", "PlayFabConfig",
           "playfab_error"]
