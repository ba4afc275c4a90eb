"""The admin endpoints: everything under ``/sandbox/``, no auth.

Sandbox-wide:

- ``GET /sandbox/health`` -> ``{"status": "ok"}``
- ``GET /sandbox/audit?project_id=&after_id=0&limit=10000`` ->
  ``{"entries": [...], "next_after_id": n}`` (``limit`` at most 100000; rows
  of Backpack/PlayFab changes also carry ``item_id``; PlayFab rows have
  ``project_id`` 0)
- ``GET /sandbox/audit/counts?project_id=&kind=purchase`` -> ``{"counts": {epid: n}}``
  (``kind`` may be any audit kind, e.g. ``playfab.grant``: then per Annotation)
- ``GET|PUT /sandbox/faults``: the fault config; PUT replaces it whole
  (``sandbox.faults`` documents it and the fault script)
- ``GET /sandbox/stats``: calls, Xsolla operations received/processed/ignored,
  ``faults`` injected by kind, ``responses`` by status (and ``dropped``),
  ``api_seconds_total``, ``idempotent``, ``calls_by_api``, ``items_by_api``
- ``POST /sandbox/reset`` (or PUT): zeroes the counters, returns the zeroed
  stats; data, faults and config stay

Xsolla inventory:

- ``GET /sandbox/balances?project_id=&user_id=`` -> ``{"balances": [{"project_id",
  "user_id", "sku", "quantity"}]}``
- ``GET|PUT /sandbox/projects/{project_id}/catalog`` (PUT body: list of SKUs,
  or null for no catalog: then every SKU exists) -> ``{"project_id", "catalog"}``
- ``GET|PUT /sandbox/config`` ``{"idempotent": bool}``: apply each (project,
  external_purchase_id) at most once

Backpack:

- ``GET /sandbox/backpack/items?merchant_id=&project_id=&user_id=&include_deleted=false``
  -> ``{"items": [item + {"user_id", "operation_id", "deleted"}]}``
- ``GET /sandbox/backpack/counts?kind=backpack.create&by=operation_id&project_id=``
  -> ``{"counts": {value: calls}, "rows": {value: items}}``; ``by`` is
  ``operation_id`` (default), ``item_id``, ``sku`` or ``user_id``; ``kind`` is
  ``backpack.create`` (default) or ``backpack.delete`` (a delete row carries
  the operation id its item was created with)
- ``GET|PUT /sandbox/backpack/projects/{project_id}/config`` ``{"metaframe_vc": bool}``

PlayFab:

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

Errors are ``{"error": "<what is wrong>"}``: 400 for bad query parameters or
a body that is not JSON, 422 for a body that is not what the endpoint takes;
the PlayFab config, catalog and players add ``"loc"``, the field's path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.backpack import BackpackApi
from sandbox.common import describe_error, json_response, query_bool, query_int
from sandbox.core import Core
from sandbox.faults import FaultConfig
from sandbox.playfab import PlayFabApi
from sandbox.playfab.models import CATALOG_BODY, PlayersBody, PlayFabConfig
from sandbox.store import Store
from sandbox.xsolla import XsollaApi

# Every audit kind, for GET /sandbox/audit/counts.
_AUDIT_KINDS = ("purchase", "reward", "revoke", "backpack.create", "backpack.delete", "playfab.grant", "playfab.revoke")
_DEFAULT_AUDIT_LIMIT = 10000
_MAX_AUDIT_LIMIT = 100000
_T = TypeVar("_T")
_XSOLLA_CATALOG_BODY: TypeAdapter[list[str] | None] = TypeAdapter(list[str] | None)
# GET /sandbox/{backpack,playfab}/counts: the kinds (default first), and the
# audit column behind each ``by`` (default first).
_BACKPACK_COUNTS = (
    ("backpack.create", "backpack.delete"),
    {
        "operation_id": "external_purchase_id",
        "item_id": "item_id",
        "sku": "sku",
        "user_id": "user_id",
    },
)
_PLAYFAB_COUNTS = (
    ("playfab.grant", "playfab.revoke"),
    {
        "annotation": "external_purchase_id",
        "item_id": "item_id",
        "sku": "sku",
        "user_id": "user_id",
    },
)


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


async def _parsed(
    request: Request, parse: Callable[[bytes], _T], if_empty: bytes, located: bool = False
) -> _T | Response:
    """The body as ``parse`` reads it (``if_empty`` standing in for an empty
    body), or the 422 naming the first problem: ``{"error": "<path>:
    <reason>"}``, or with ``located`` ``{"error": "<reason>", "loc": [path]}``."""
    try:
        return parse(await request.body() or if_empty)
    except ValidationError as exc:
        if not located:
            return _error(422, describe_error(exc))
        first = exc.errors(include_url=False)[0]
        return json_response({"error": str(first["msg"]), "loc": list(first["loc"])}, 422)


class _NotJson(Exception):
    pass


async def _json_body(request: Request, if_empty: bytes | None = None) -> Any:
    """The body parsed as JSON (``if_empty`` stands in for an empty one);
    _NotJson if it is not JSON."""
    raw = await request.body()
    try:
        return orjson.loads(raw or if_empty or b"")
    except orjson.JSONDecodeError:
        raise _NotJson from None


class Admin:
    """The ``/sandbox/`` handlers over the shared store and core and the three APIs."""

    def __init__(self, store: Store, core: Core, xsolla: XsollaApi, backpack: BackpackApi, playfab: PlayFabApi) -> None:
        """Expose and control these parts of one app."""
        self.store = store
        self.core = core
        self.xsolla = xsolla
        self.backpack = backpack
        self.playfab = playfab

    def routes(self) -> list[Route]:
        """Every admin route."""
        # Every handler is async so that all store access stays on the
        # event-loop thread (sync handlers would run in a thread pool).
        return [
            Route("/sandbox/health", self.health, methods=["GET"]),
            Route("/sandbox/audit", self.audit, methods=["GET"]),
            Route("/sandbox/audit/counts", self.audit_counts, methods=["GET"]),
            Route("/sandbox/balances", self.balances, methods=["GET"]),
            Route("/sandbox/projects/{project_id:int}/catalog", self.catalog, methods=["GET", "PUT"]),
            Route("/sandbox/faults", self.faults, methods=["GET", "PUT"]),
            Route("/sandbox/config", self.config, methods=["GET", "PUT"]),
            Route("/sandbox/stats", self.stats, methods=["GET"]),
            # PUT as well: some callers only have a PUT-with-JSON helper.
            Route("/sandbox/reset", self.reset, methods=["POST", "PUT"]),
            Route("/sandbox/backpack/items", self.backpack_items, methods=["GET"]),
            Route("/sandbox/backpack/counts", self.backpack_counts, methods=["GET"]),
            Route("/sandbox/backpack/projects/{project_id:int}/config", self.backpack_config, methods=["GET", "PUT"]),
            Route("/sandbox/playfab/config", self.playfab_config, methods=["GET", "PUT"]),
            Route("/sandbox/playfab/catalog", self.playfab_catalog, methods=["GET", "PUT"]),
            Route("/sandbox/playfab/players", self.playfab_players, methods=["GET", "POST"]),
            Route("/sandbox/playfab/inventory", self.playfab_inventory, methods=["GET"]),
            Route("/sandbox/playfab/counts", self.playfab_counts, methods=["GET"]),
        ]

    # --------------------------------------------------------- sandbox-wide

    async def health(self, request: Request) -> Response:
        """``GET /sandbox/health``."""
        return json_response({"status": "ok"})

    async def audit(self, request: Request) -> Response:
        """``GET /sandbox/audit``: one page of audit rows."""
        try:
            project_id = query_int(request, "project_id", None)
            after_id = query_int(request, "after_id", 0) or 0
            limit = query_int(request, "limit", _DEFAULT_AUDIT_LIMIT) or 0
        except ValueError:
            return _error(400, "project_id, after_id and limit must be integers")
        limit = max(0, min(limit, _MAX_AUDIT_LIMIT))
        entries = self.store.audit(project_id, after_id, limit)
        next_after_id = entries[-1]["id"] if entries else after_id
        return json_response({"entries": entries, "next_after_id": next_after_id})

    async def audit_counts(self, request: Request) -> Response:
        """``GET /sandbox/audit/counts``: applying operations per external_purchase_id."""
        try:
            project_id = query_int(request, "project_id", None)
        except ValueError:
            return _error(400, "project_id must be an integer")
        kind = request.query_params.get("kind", "purchase")
        if kind not in _AUDIT_KINDS:
            return _error(400, f"kind must be one of {', '.join(_AUDIT_KINDS)}")
        return json_response({"counts": self.store.audit_counts(project_id, kind)})

    async def faults(self, request: Request) -> Response:
        """``GET|PUT /sandbox/faults``."""
        faults = self.core.faults
        if request.method == "PUT":
            config = await _parsed(request, FaultConfig.model_validate_json, b"{}")
            if isinstance(config, Response):
                return config
            faults.replace(config)
        return json_response(faults.snapshot())

    async def stats(self, request: Request) -> Response:
        """``GET /sandbox/stats``."""
        return json_response(self._stats_body())

    async def reset(self, request: Request) -> Response:
        """``POST|PUT /sandbox/reset``: zero the counters, answer the zeroed stats."""
        self.core.reset_stats()
        return json_response(self._stats_body())

    def _stats_body(self) -> dict[str, Any]:
        s = self.core.stats
        return {
            "calls": s.calls,
            "operations_received": s.operations_received,
            "operations_processed": s.operations_processed,
            "max_operations_per_call": s.max_operations_per_call,
            "ignored_operations": s.ignored_operations,
            "faults": dict(self.core.faults.counts),
            "responses": dict(s.responses),
            "api_seconds_total": s.api_seconds,
            "idempotent": self.xsolla.idempotent,
            "calls_by_api": dict(s.calls_by_api),
            "items_by_api": dict(s.items_by_api),
        }

    # --------------------------------------------------------------- Xsolla

    async def balances(self, request: Request) -> Response:
        """``GET /sandbox/balances``."""
        try:
            project_id = query_int(request, "project_id", None)
        except ValueError:
            return _error(400, "project_id must be an integer")
        user_id = request.query_params.get("user_id") or None
        return json_response({"balances": self.xsolla.store.balances(project_id, user_id)})

    async def catalog(self, request: Request) -> Response:
        """``GET|PUT /sandbox/projects/{project_id}/catalog``."""
        project_id = request.path_params["project_id"]
        store = self.xsolla.store
        if request.method == "PUT":
            # An empty body counts as null (httpx sends none for json=None).
            skus = await _parsed(request, _XSOLLA_CATALOG_BODY.validate_json, b"null")
            if isinstance(skus, Response):
                return skus
            store.set_catalog(project_id, skus)
        current = store.catalog(project_id)
        return json_response({"project_id": project_id, "catalog": None if current is None else sorted(current)})

    async def config(self, request: Request) -> Response:
        """``GET|PUT /sandbox/config``."""
        if request.method == "PUT":
            try:
                body = await _json_body(request)
            except _NotJson:
                return _error(400, "body must be JSON")
            if not isinstance(body, dict) or not isinstance(body.get("idempotent"), bool):
                return _error(422, 'body must be {"idempotent": true|false}')
            self.xsolla.idempotent = body["idempotent"]
        return json_response({"idempotent": self.xsolla.idempotent})

    # ------------------------------------------------------------- Backpack

    async def backpack_items(self, request: Request) -> Response:
        """``GET /sandbox/backpack/items``."""
        try:
            merchant_id = query_int(request, "merchant_id", None)
            project_id = query_int(request, "project_id", None)
            include_deleted = query_bool(request, "include_deleted")
        except ValueError:
            return _error(400, "merchant_id and project_id must be integers, include_deleted true or false")
        user_id = request.query_params.get("user_id") or None
        return json_response(
            {
                "items": self.backpack.store.items(
                    merchant_id,
                    project_id,
                    user_id,
                    include_deleted,
                )
            }
        )

    async def backpack_counts(self, request: Request) -> Response:
        """``GET /sandbox/backpack/counts``."""
        try:
            project_id = query_int(request, "project_id", None)
        except ValueError:
            return _error(400, "project_id must be an integer")
        return self._counts(request, *_BACKPACK_COUNTS, project_id)

    async def backpack_config(self, request: Request) -> Response:
        """``GET|PUT /sandbox/backpack/projects/{project_id}/config``."""
        project_id: int = request.path_params["project_id"]
        store = self.backpack.store
        if request.method == "PUT":
            try:
                body = await _json_body(request, if_empty=b"{}")
            except _NotJson:
                return _error(400, "body must be JSON")
            if (
                not isinstance(body, dict)
                or set(body) != {"metaframe_vc"}
                or not isinstance(body["metaframe_vc"], bool)
            ):
                return _error(422, 'body must be {"metaframe_vc": true|false}')
            store.set_metaframe_vc(project_id, body["metaframe_vc"])
        return json_response({"project_id": project_id, "metaframe_vc": store.metaframe_vc(project_id)})

    # -------------------------------------------------------------- PlayFab

    async def playfab_config(self, request: Request) -> Response:
        """``GET|PUT /sandbox/playfab/config``."""
        if request.method == "PUT":
            config = await _parsed(request, PlayFabConfig.model_validate_json, b"{}", located=True)
            if isinstance(config, Response):
                return config
            self.playfab.config = config
        return json_response(self.playfab.config.model_dump())

    async def playfab_catalog(self, request: Request) -> Response:
        """``GET|PUT /sandbox/playfab/catalog``."""
        if request.method == "PUT":
            catalog = await _parsed(request, CATALOG_BODY.validate_json, b"null", located=True)
            if isinstance(catalog, Response):
                return catalog
            self.playfab.set_catalog(catalog)
        current = self.playfab.catalog
        return json_response(None if current is None else current.model_dump(exclude_none=True))

    async def playfab_players(self, request: Request) -> Response:
        """``GET|POST /sandbox/playfab/players``."""
        store = self.playfab.store
        if request.method == "POST":
            body = await _parsed(request, PlayersBody.model_validate_json, b"{}", located=True)
            if isinstance(body, Response):
                return body
            store.create_players(body.PlayFabIds, body.VirtualCurrency)
        return json_response({"players": store.players()})

    async def playfab_inventory(self, request: Request) -> Response:
        """``GET /sandbox/playfab/inventory``: a player's items, character ones too."""
        player = request.query_params.get("player")
        if not player:
            return _error(400, "give ?player=PlayFabId")
        data = self.playfab.inventory_data(player, characters=True)
        data["exists"] = bool(self.playfab.store.existing_players({player}))
        return json_response(data)

    async def playfab_counts(self, request: Request) -> Response:
        """``GET /sandbox/playfab/counts``."""
        return self._counts(request, *_PLAYFAB_COUNTS, None)

    def _counts(
        self, request: Request, kinds: tuple[str, ...], columns: dict[str, str], project_id: int | None
    ) -> Response:
        """Audit counts of one backend's ``kind`` rows grouped ``by`` a column."""
        kind = request.query_params.get("kind", kinds[0])
        by = request.query_params.get("by", next(iter(columns)))
        if kind not in kinds or by not in columns:
            return _error(400, f"kind must be one of {', '.join(kinds)}; by one of {', '.join(columns)}")
        got = self.store.audit_counts_by(kind, columns[by], project_id)
        return json_response({"counts": got["calls"], "rows": got["rows"]})
