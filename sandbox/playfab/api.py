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
is created on its first grant and counts as existing everywhere). The title's
config, catalog and players are set through ``/sandbox/playfab/...``
(``sandbox.admin``). All grants and revokes are audited in the shared audit
table with ``project_id`` 0.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.common import json_response
from sandbox.core import Api, Core
from sandbox.faults import WRONG_USER_ID
from sandbox.playfab.errors import fault_error, invalid_params, playfab_error
from sandbox.playfab.models import CatalogConfig, CatalogItem, PlayFabConfig
from sandbox.playfab.store import PlayFabStore
from schemas.playfab import (
    GetUserInventoryRequest,
    GrantItemsToUsersRequest,
    ItemGrant,
    PlayFabErrorCode,
    RevokeInventoryItemsRequest,
)

# For local use only; real deployments pass their own (server.py flags/env).
DEFAULT_PLAYFAB_SECRET_KEY = "sandbox-playfab-secret-key"
SECRET_KEY_HEADER = "X-SecretKey"

_Req = TypeVar("_Req", bound=BaseModel)


class PlayFabApi(Api):
    """Handlers of the PlayFab routes, and the title's config and catalog."""

    name = "playfab"
    prefix = "/playfab/"

    def __init__(self, core: Core, store: PlayFabStore, secret_key: str, config: PlayFabConfig | None = None) -> None:
        """Serve ``store``'s title to callers sending ``secret_key``."""
        super().__init__(core)
        self.store = store
        self._secret = secret_key.encode()
        self.config = config or PlayFabConfig()
        raw = store.catalog()
        self._use_catalog(None if raw is None else CatalogConfig.model_validate(raw))

    def routes(self) -> list[Route]:
        """The three Admin API routes."""
        return [
            Route("/playfab/Admin/GrantItemsToUsers", self._endpoint(self._grant), methods=["POST"]),
            Route("/playfab/Admin/GetUserInventory", self._endpoint(self._inventory), methods=["POST"]),
            Route("/playfab/Admin/RevokeInventoryItems", self._endpoint(self._revoke), methods=["POST"]),
        ]

    # ------------------------------------------------------------ the hooks

    def authorize(self, request: Request) -> Response | None:
        """None if ``X-SecretKey`` is right, else the 401/403 answer."""
        key = request.headers.get(SECRET_KEY_HEADER)
        if key is None:
            return playfab_error(
                401, PlayFabErrorCode.NotAuthenticated, "This API method does not allow anonymous callers."
            )
        if not hmac.compare_digest(key.strip().encode("latin-1"), self._secret):
            return playfab_error(403, PlayFabErrorCode.NotAuthorized, "Invalid X-SecretKey header.")
        return None

    def fault_response(self, status: int, retry_after: int | None) -> Response:
        """An injected error, as an ApiErrorWrapper."""
        return fault_error(status, retry_after)

    def misattribute(self, response: Response) -> Response:
        """A GrantItemsToUsers answer with every result's PlayFabId someone else's."""
        data = orjson.loads(response.body)
        results = data.get("data", {}).get("ItemGrantResults")
        if results is None:
            return response
        for result in results:
            result["PlayFabId"] = WRONG_USER_ID
        return json_response(data, response.status_code)

    # ---------------------------------------------------------- title state

    def set_catalog(self, catalog: CatalogConfig | None) -> None:
        """Make ``catalog`` the title's (None: no catalog, every ItemId exists)."""
        self.store.set_catalog(None if catalog is None else catalog.model_dump(exclude_none=True))
        self._use_catalog(catalog)

    def _use_catalog(self, catalog: CatalogConfig | None) -> None:
        self.catalog = catalog
        self._catalog_items = None if catalog is None else catalog.by_id()

    def inventory_data(self, playfab_id: str, characters: bool) -> dict[str, Any]:
        """GetUserInventory's ``data`` for a player (with character items too
        when ``characters``, each carrying its CharacterId)."""
        currencies = {code: 0 for code in self._title_currencies()}
        currencies.update(self.store.currencies(playfab_id))
        return {
            "Inventory": self.store.inventory(playfab_id, characters=characters),
            "PlayFabId": playfab_id,
            "VirtualCurrency": currencies,
            "VirtualCurrencyRechargeTimes": {},
        }

    def _title_currencies(self) -> list[str]:
        # The title's currencies as far as the sandbox knows them: those its
        # catalog bundles grant (PlayFab lists every title currency, at 0).
        return sorted({code for item in (self._catalog_items or {}).values() for code in item.currencies})

    def _players(self, ids: set[str]) -> tuple[set[str], set[str]]:
        """(existing, to_create) among ``ids``; the rest are unknown."""
        existing = self.store.existing_players(ids)
        to_create: set[str] = set()
        if self.config.auto_create_players:
            unknown = set(self.config.unknown_players)
            to_create = {pid for pid in ids - existing if pid not in unknown}
        return existing, to_create

    def _title_refusal(self, grant: bool) -> Response | None:
        state = self.config.title_state
        if state == "product_disabled":
            return playfab_error(
                400, PlayFabErrorCode.ProductDisabledForTitle, "The legacy economy is disabled for this title."
            )
        if state == "catalog_not_configured" and grant:
            return playfab_error(400, PlayFabErrorCode.CatalogNotConfigured, "No catalog is configured for this title.")
        return None

    # ------------------------------------------------------------------ API

    def _endpoint(self, handler: Callable[[bytes], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def apply() -> Response:
                return handler(await request.body())

            return await self.call(request, apply)

        return endpoint

    def _admit(
        self, model: type[_Req], body: bytes, grant: bool, items: Callable[[_Req], int] | None = None
    ) -> _Req | Response:
        """The request parsed, its items counted and the title state checked,
        or the refusal (400 InvalidParams or the title's error)."""
        try:
            req = model.model_validate_json(body)
        except ValidationError as exc:
            return invalid_params(exc)
        if items is not None:
            self.core.stats.items_by_api["playfab"] += items(req)
        refused = self._title_refusal(grant)
        return req if refused is None else refused

    def _grant(self, body: bytes) -> Response:
        req = self._admit(GrantItemsToUsersRequest, body, grant=True, items=lambda r: len(r.ItemGrants))
        if isinstance(req, Response):
            return req
        catalog = self.catalog
        if catalog is not None and req.CatalogVersion not in (None, catalog.CatalogVersion):
            return playfab_error(
                400,
                PlayFabErrorCode.CatalogNotConfigured,
                f"Catalog version {req.CatalogVersion!r} is not configured.",
                {"CatalogVersion": [req.CatalogVersion or ""]},
            )
        ids = {g.PlayFabId for g in req.ItemGrants}
        existing, to_create = self._players(ids)
        unknown = sorted(ids - existing - to_create)
        if unknown:
            return playfab_error(400, PlayFabErrorCode.AccountNotFound, "User not found", {"PlayFabId": unknown})
        version = req.CatalogVersion or (catalog.CatalogVersion if catalog else None)
        # PlayFab's timestamps: ISO 8601 UTC with milliseconds and a "Z".
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        results: list[dict[str, Any]] = []
        to_store: list[tuple[int, dict[str, Any]]] = []
        for index, grant in enumerate(req.ItemGrants):
            entry = (
                self._catalog_items.get(grant.ItemId)
                if self._catalog_items is not None
                else CatalogItem(ItemId=grant.ItemId)
            )
            if entry is None:
                # Not in the title's catalog: this item alone fails.
                results.append({**_identity(grant), "Result": False})
            else:
                results.append({})
                to_store.append((index, _to_store(grant, entry, version, now)))
        instance_ids = self.store.grant([stored for _, stored in to_store], sorted(to_create))
        for (index, stored), instance_id in zip(to_store, instance_ids, strict=True):
            results[index] = _granted(stored, instance_id)
        if self.config.shuffle_results:
            results = [results[i] for i in _shuffled(len(results), self.config.shuffle_seed, body)]
        return _success({"ItemGrantResults": results})

    def _inventory(self, body: bytes) -> Response:
        req = self._admit(GetUserInventoryRequest, body, grant=False)
        if isinstance(req, Response):
            return req
        existing, to_create = self._players({req.PlayFabId})
        if not existing and not to_create:
            return playfab_error(
                400, PlayFabErrorCode.AccountNotFound, "User not found", {"PlayFabId": [req.PlayFabId]}
            )
        return _success(self.inventory_data(req.PlayFabId, characters=False))

    def _revoke(self, body: bytes) -> Response:
        req = self._admit(RevokeInventoryItemsRequest, body, grant=False, items=lambda r: len(r.Items))
        if isinstance(req, Response):
            return req
        existing, to_create = self._players({item.PlayFabId for item in req.Items})
        errors = self.store.revoke(
            [(i.PlayFabId, i.ItemInstanceId, i.CharacterId) for i in req.Items],
            existing | to_create,
        )
        return _success(
            {
                "Errors": [
                    {"Error": error, "Item": req.Items[index].model_dump(exclude_none=True)} for index, error in errors
                ]
            }
        )


def _success(data: dict[str, Any]) -> Response:
    return json_response({"code": 200, "status": "OK", "data": data})


def _identity(grant: ItemGrant) -> dict[str, Any]:
    """Who and what a grant result names, whether granted or not."""
    out: dict[str, Any] = {"PlayFabId": grant.PlayFabId, "ItemId": grant.ItemId}
    if grant.Annotation is not None:
        out["Annotation"] = grant.Annotation
    if grant.CharacterId is not None:
        out["CharacterId"] = grant.CharacterId
    return out


def _to_store(grant: ItemGrant, entry: CatalogItem, version: str | None, now: str) -> dict[str, Any]:
    """The store's record of one granted instance (``body``: as
    GetUserInventory will show it, no null fields)."""
    instance: dict[str, Any] = {"ItemId": grant.ItemId, "PurchaseDate": now}
    for key, value in (
        ("Annotation", grant.Annotation),
        ("CatalogVersion", version),
        ("ItemClass", entry.ItemClass),
        ("DisplayName", entry.DisplayName),
    ):
        if value is not None:
            instance[key] = value
    removed = set(grant.KeysToRemove or ())
    custom = {k: v for k, v in (grant.Data or {}).items() if v is not None and k not in removed}
    if custom:
        instance["CustomData"] = custom
    return {
        "playfab_id": grant.PlayFabId,
        "character_id": grant.CharacterId,
        "item_id": grant.ItemId,
        "annotation": grant.Annotation,
        "body": instance,
        "currencies": entry.currencies,
    }


def _granted(stored: dict[str, Any], instance_id: str) -> dict[str, Any]:
    """A GrantedItemInstance with ``Result: true``."""
    result = dict(stored["body"], ItemInstanceId=instance_id, PlayFabId=stored["playfab_id"], Result=True)
    if stored["character_id"] is not None:
        result["CharacterId"] = stored["character_id"]
    return result


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
