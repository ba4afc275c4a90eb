"""PlayFab, legacy Admin economy API.

- Grants: ``POST {base}/Admin/GrantItemsToUsers``. Each purchased item becomes
  ``quantity`` ItemGrants for the user (PlayFabId = the command's user id,
  ItemId = the SKU), each annotated with the purchase id, so every instance
  says which purchase made it. PlayFab's own ItemGrant fields travel in the
  operation's ``custom_parameters.playfab``: ``CharacterId``, ``Data``,
  ``KeysToRemove`` (per grant) and ``CustomTags`` (per call). The answer's order may differ from the
  request's: results are matched by (PlayFabId, ItemId, Annotation), never by
  position. ``Result: false`` fails that command only.
- Revokes: ``POST {base}/Admin/RevokeInventoryItems`` with the instance ids
  the grant's answer recorded, at most 25 per call; per-item errors.
- An unknown outcome is reconcilable: ``GetUserInventory`` shows whether the
  annotated instances exist. Not idempotent: a repeated grant is a second one.

Errors come in PlayFab's ``ApiErrorWrapper``: AccountNotFound (1001) rejects
that user's grants only (the call applied nothing, the others are sent
again); CatalogNotConfigured (1218) and ProductDisabledForTitle (1609) are
final for the call; APIRequestLimitExceeded (1130), ServiceUnavailable (1123)
and 503 are retried.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import ValidationError

from schemas.commands import GrantCommand, PlayFabDeleteCommand
from schemas.kinds import GRANT, PLAYFAB_DELETE, REVOKE
from schemas.playfab import (
    MAX_ITEM_GRANTS_PER_CALL,
    MAX_REVOKE_ITEMS_PER_CALL,
    RETRYABLE_ERROR_CODES,
    AccountNotFound,
    CatalogNotConfigured,
    GetUserInventoryResult,
    GrantItemsToUsersRequest,
    ItemGrant,
    ProductDisabledForTitle,
    ServiceUnavailable,
)
from worker import errors
from worker.backends.base import OpResult
from worker.backends.http import MAX_ERROR_BODY, build_client, request, retry_after_s, translated
from worker.settings import ProjectBackend, Settings
from worker.work import Lane, OnUnknown, RevokeOrder, Sendable


class PlayFab:
    """Backend for one PlayFab title."""

    name = "playfab"
    # Not idempotent (a repeated grant is a second one), but every instance
    # is annotated with its purchase: a lost answer is read back.
    on_unknown = OnUnknown.reconcile

    def __init__(self, client: httpx.Client, *, catalog_version: str | None = None):
        self.client = client
        self.catalog_version = catalog_version

    @classmethod
    def from_settings(
        cls, settings: Settings, project: ProjectBackend, transport: httpx.BaseTransport | None = None
    ) -> PlayFab:
        client = build_client(
            settings,
            (project.base_url or settings.playfab_base_url).rstrip("/") + "/",
            headers={"X-SecretKey": project.secret(settings.playfab_secret_key)},
            transport=transport,
        )
        return cls(client, catalog_version=settings.playfab_catalog_version)

    # --- calls -------------------------------------------------------------

    def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST Admin/{method}; the ``data`` of a success, else a mapped error."""
        what = f"POST Admin/{method}"
        with errors.building(what):
            content = orjson.dumps(body)
        with translated(what):
            response = request(
                self.client, "POST", f"Admin/{method}", content=content, headers={"content-type": "application/json"}
            )
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            payload = {}
        if response.status_code == 200 and isinstance(payload, dict) and isinstance(payload.get("data"), dict):
            return payload["data"]
        raise self._error(what, response, payload if isinstance(payload, dict) else {})

    @staticmethod
    def _error(what: str, response: httpx.Response, wrapper: dict[str, Any]) -> errors.BackendError:
        status, code = response.status_code, wrapper.get("errorCode")
        if wrapper:
            message = f"{what}: HTTP {status} {wrapper.get('error', '')} ({code}): {wrapper.get('errorMessage', '')}"
        else:  # not PlayFab's envelope (a proxy, a load balancer): keep what it said
            message = f"{what}: HTTP {status}: {response.text[:MAX_ERROR_BODY]}"
        if status == 200:  # a 200 without the envelope: applied or not, we cannot tell
            return errors.OutcomeUnknown(f"{what}: unreadable answer", status=status)
        if 300 <= status < 400 or (status in (404, 405) and code is None):
            # A redirect, or a path PlayFab does not know (no error envelope):
            # the base URL is wrong, not the command.
            where = response.headers.get("location", "")
            return errors.EndpointRefused(
                f"{what}: HTTP {status}{' to ' + where if where else ''} without a "
                "PlayFab error: the base URL or configuration is wrong",
                status=status,
            )
        if status == 503 or code == ServiceUnavailable:
            return errors.ServerError(message, status=status)
        if status == 429 or code in RETRYABLE_ERROR_CODES:
            retry = retry_after_s(response.headers.get("retry-after")) or wrapper.get("retryAfterSeconds")
            return errors.RateLimited(message, retry_after=retry, status=status)
        if status in (401, 403):
            return errors.AuthFailed(message, status=status)
        if code == AccountNotFound:
            unknown = set((wrapper.get("errorDetails") or {}).get("PlayFabId") or [])
            return AccountsNotFound(message, unknown)
        if code in (CatalogNotConfigured, ProductDisabledForTitle):
            return errors.Permanent(message, status=status)  # final for the whole call
        if status >= 500:
            return errors.OutcomeUnknown(message, status=status)
        return errors.InvalidRequest(message, status=status)

    # --- the Backend interface ----------------------------------------------

    def send(self, lane: Lane, commands: list[Sendable]) -> list[OpResult]:
        """One logical call; one result per command, matched by identity."""
        if lane.kind == REVOKE:
            return [self._revoke(c) for c in only(RevokeOrder, commands)]
        if lane.kind == PLAYFAB_DELETE:
            return self._delete(only(PlayFabDeleteCommand, commands))
        return self._grant(only(GrantCommand, commands))

    def _delete(self, commands: list[PlayFabDeleteCommand]) -> list[OpResult]:
        """One RevokeInventoryItems call for up to 25 instances; per-item errors."""
        items = [
            {
                "PlayFabId": c.playfab_id,
                "ItemInstanceId": c.item_instance_id,
                **({"CharacterId": c.character_id} if c.character_id else {}),
            }
            for c in commands
        ]
        data = self._call("RevokeInventoryItems", {"Items": items})
        failed = {(e.get("Item") or {}).get("ItemInstanceId"): e.get("Error") for e in data.get("Errors") or []}
        return [
            OpResult("rejected", error=f"PlayFab: {failed[c.item_instance_id]}")
            if c.item_instance_id in failed
            else OpResult("applied", response={"revoked": c.item_instance_id})
            for c in commands
        ]

    def _grant(self, commands: list[GrantCommand]) -> list[OpResult]:
        results: list[OpResult | None] = [None] * len(commands)
        todo = []
        for i, c in enumerate(commands):
            problem = grant_problem(c)
            if problem:
                results[i] = OpResult("rejected", error=problem)
            else:
                todo.append(i)
        # AccountNotFound fails the whole call and applies nothing: reject that
        # user's commands and send the others again (at most once per user).
        for _round in range(len(commands) + 1):
            with errors.building("GrantItemsToUsers"):
                grants = [g for i in todo for g in item_grants(commands[i])]
            if not grants:
                break
            if len(grants) > MAX_ITEM_GRANTS_PER_CALL:
                raise errors.InvalidRequest(
                    f"{len(grants)} ItemGrants in one call (at most {MAX_ITEM_GRANTS_PER_CALL}): not sent"
                )
            body: dict[str, Any] = {"ItemGrants": grants}
            if self.catalog_version:
                body["CatalogVersion"] = self.catalog_version
            tags = {k: v for i in todo for k, v in (playfab_extras(commands[i]).get("CustomTags") or {}).items()}
            if tags:
                body["CustomTags"] = tags
            try:
                data = self._call("GrantItemsToUsers", body)
            except AccountsNotFound as exc:
                gone = [i for i in todo if commands[i].user_id in exc.accounts] if exc.accounts else todo
                for i in gone:
                    results[i] = OpResult("rejected", error=f"AccountNotFound: no PlayFab player {commands[i].user_id}")
                todo = [i for i in todo if i not in gone]
                continue
            pool = defaultdict(list)
            for r in data.get("ItemGrantResults") or []:
                pool[(r.get("PlayFabId"), r.get("ItemId"), r.get("Annotation"))].append(r)
            for i in todo:
                results[i] = match_grant(commands[i], pool)
            break
        return [r or OpResult("rejected", error="not sent") for r in results]

    def _revoke(self, command: RevokeOrder) -> OpResult:
        instances = (command.refund or {}).get("instances") or []
        if not instances:
            return OpResult("rejected", error="the grant's answer lists no item instances to revoke")
        errors_seen: list[Any] = []
        for start in range(0, len(instances), MAX_REVOKE_ITEMS_PER_CALL):
            chunk = instances[start : start + MAX_REVOKE_ITEMS_PER_CALL]
            data = self._call("RevokeInventoryItems", {"Items": chunk})
            errors_seen += data.get("Errors") or []
        if errors_seen:
            return OpResult(
                "rejected",
                response={"Errors": errors_seen},
                error=f"{len(errors_seen)} of {len(instances)} instances not revoked",
            )
        return OpResult("applied", response={"revoked": instances})

    def reconcile(self, lane: Lane, commands: list[Sendable]) -> list[OpResult | None]:
        """After an unknown outcome: applied ones (as results), None where nothing applied.

        Reads each user's inventory; raises a BackendError when it cannot.
        """
        grants = [c for c in commands if isinstance(c, GrantCommand)]
        if lane.kind != GRANT or len(grants) != len(commands):
            raise errors.OutcomeUnknown(f"{lane.kind} commands are not read back")
        inventories: dict[str, list[dict[str, Any]]] = {}
        for user in {c.user_id for c in grants}:
            data = self._call("GetUserInventory", {"PlayFabId": user})
            inventories[user] = data.get("Inventory") or []
        out: list[OpResult | None] = []
        for c in grants:
            if playfab_extras(c).get("CharacterId"):
                # A character's items are not in the player's inventory read:
                # absence proves nothing, so the outcome stays unknown.
                out.append(OpResult("in_doubt", error="answer lost; a character's grant cannot be read back"))
                continue
            # Shaped as GrantItemsToUsers reports granted instances (owner,
            # Result): what the grant's refund data and a revoke are made of.
            found = [
                {**i, "PlayFabId": c.user_id, "Result": True}
                for i in inventories[c.user_id]
                if i.get("Annotation") == c.external_purchase_id
            ]
            expected = Counter((g["ItemId"]) for g in item_grants(c))
            have = Counter(i.get("ItemId") for i in found)
            if not found:
                out.append(None)
            elif have == expected:
                out.append(OpResult("applied", response={"ItemGrantResults": found, "reconciled": True}))
            else:
                out.append(OpResult("in_doubt", error=f"inventory shows {dict(have)} of {dict(expected)}"))
        return out

    # --- reads (operators: grants inventory, grants resolve) -----------------

    def get_user_inventory(self, playfab_id: str) -> GetUserInventoryResult:
        """Admin/GetUserInventory: the player's own (not characters') item
        instances and virtual currency. Raises worker.errors on failure, and
        OutcomeUnknown for an answer not as documented."""
        what = f"POST Admin/GetUserInventory ({playfab_id})"
        data = self._call("GetUserInventory", {"PlayFabId": playfab_id})
        try:
            return GetUserInventoryResult.model_validate(data)
        except ValidationError as exc:
            raise errors.OutcomeUnknown(f"{what}: an answer not as documented ({exc.error_count()} problems)") from None

    def purchase_instances(
        self, playfab_id: str, purchase_id: str, inventory: GetUserInventoryResult | None = None
    ) -> list[dict[str, Any]]:
        """The player's instances annotated with ``purchase_id`` (what our
        grants write), as GrantItemsToUsers reports granted instances
        (``PlayFabId``, ``Result: true``): what a revoke of them needs. Reads
        the inventory unless given one read already."""
        if inventory is None:
            inventory = self.get_user_inventory(playfab_id)
        return [
            {**i.model_dump(exclude_none=True), "PlayFabId": playfab_id, "Result": True}
            for i in inventory.Inventory
            if i.Annotation == purchase_id
        ]

    def refund_data(self, kind: str, command: Sendable, response: Any) -> dict[str, Any] | None:
        """A grant's revoke takes back the item instances it created."""
        if kind != GRANT:
            return None
        return {"instances": granted_instances(response)}

    def close(self) -> None:
        self.client.close()


class AccountsNotFound(errors.Permanent):
    """AccountNotFound (1001): the call applied nothing; ``accounts`` are unknown."""

    def __init__(self, message: str, accounts: set[str]):
        super().__init__(message)
        self.accounts = accounts


T = TypeVar("T")


def only(kind: type[T], commands: list[Sendable]) -> list[T]:
    """The commands, each checked to be what this call sends (nothing sent otherwise)."""
    wrong = [type(c).__name__ for c in commands if not isinstance(c, kind)]
    if wrong:
        raise errors.NotSent(f"PlayFab: {kind.__name__} expected, got {wrong}")
    return commands  # type: ignore[return-value]


def playfab_extras(command: GrantCommand) -> dict[str, Any]:
    """PlayFab's own fields for a grant, from ``custom_parameters.playfab``."""
    extras = (command.operation.custom_parameters or {}).get("playfab")
    return extras if isinstance(extras, dict) else {}


def grant_problem(command: GrantCommand) -> str | None:
    """Why this purchase cannot become ItemGrants, or None."""
    for item in command.operation.items:
        if item.quantity != int(item.quantity):
            return f"PlayFab grants whole item instances: quantity {item.quantity} of {item.sku}"
    extras = playfab_extras(command)
    unknown = set(extras) - {"CharacterId", "Data", "KeysToRemove", "CustomTags"}
    if unknown:
        return f"custom_parameters.playfab: unknown fields {sorted(unknown)}"
    try:
        for g in item_grants(command)[:1]:
            ItemGrant.model_validate(g)
        if "CustomTags" in extras:
            GrantItemsToUsersRequest.model_validate(
                {"ItemGrants": [item_grants(command)[0]], "CustomTags": extras["CustomTags"]}
            )
    except ValidationError as exc:
        return "custom_parameters.playfab: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
    return None


def item_grants(command: GrantCommand) -> list[dict[str, Any]]:
    """The ItemGrants of one purchase: ``quantity`` instances per item."""
    extras = {k: v for k, v in playfab_extras(command).items() if k in ("CharacterId", "Data", "KeysToRemove")}
    return [
        {"PlayFabId": command.user_id, "ItemId": item.sku, "Annotation": command.external_purchase_id, **extras}
        for item in command.operation.items
        for _ in range(int(item.quantity))
    ]


def match_grant(command: GrantCommand, pool: dict[tuple, list[dict[str, Any]]]) -> OpResult:
    """Take this purchase's instances out of the answer's pool, by identity."""
    got, missing = [], 0
    for g in item_grants(command):
        bucket = pool.get((g["PlayFabId"], g["ItemId"], g["Annotation"]))
        if bucket:
            got.append(bucket.pop())
        else:
            missing += 1
    if missing:
        return OpResult(
            "in_doubt",
            response={"ItemGrantResults": got},
            error=f"the answer did not report {missing} of the purchase's items",
        )
    refused = [g["ItemId"] for g in got if not g.get("Result")]
    if refused:
        return OpResult(
            "rejected", response={"ItemGrantResults": got}, error=f"PlayFab did not grant {refused} (Result: false)"
        )
    return OpResult("applied", response={"ItemGrantResults": got})


def granted_instances(grant_result: Any) -> list[dict[str, Any]]:
    """RevokeInventoryItems entries for the instances a grant created."""
    if not isinstance(grant_result, dict):
        return []
    return [
        {
            "PlayFabId": r["PlayFabId"],
            "ItemInstanceId": r["ItemInstanceId"],
            **({"CharacterId": r["CharacterId"]} if r.get("CharacterId") else {}),
        }
        for r in grant_result.get("ItemGrantResults") or []
        if r.get("Result") and r.get("ItemInstanceId") and r.get("PlayFabId")
    ]
