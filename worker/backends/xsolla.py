"""Xsolla inventory API: ``POST /v2/project/{project_id}/inventory/purchase``
(grants) and ``.../inventory/revoke`` (refunds).

At most 50 operations per call (Xsolla ignores the rest without a word), HTTP
Basic auth with the merchant id and API key. A 200 answers
``{"count": n, "operations": [...]}``, one entry per operation with each item's
new ``balance``. A revoke the inventory cannot cover answers 404 "Failed to
remove this number of items" for the whole call: the sender splits the batch
until that revoke is alone, and it is rejected. Xsolla does not say what a
repeated ``external_purchase_id`` does: a lost answer is in doubt unless
GRANTS_XSOLLA_IDEMPOTENT says the account ignores repeats.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from schemas.commands import GrantCommand
from schemas.kinds import GRANT, KINDS
from worker import errors
from worker.backends.base import OpResult
from worker.backends.http import build_client, check_status, error_message, request, translated
from worker.settings import ProjectBackend, Settings
from worker.work import Lane, OnUnknown, RevokeOrder, Sendable

_PATHS = {"grant": "purchase", "revoke": "revoke"}

# What `grants inventory` says for a project on Xsolla's inventory API.
NO_INVENTORY_READ = (
    "Xsolla's inventory API has no server-side read of a user's inventory: its \"Get user's inventory\" "
    "is a game-client method, authorized by the player's Xsolla Login JWT or a Pay Station access token, "
    "not by the merchant's API key this service holds. Check the user's inventory in Publisher Account "
    "(or from the game client), then record what you found with `grants resolve`."
)


def operation(command: Sendable) -> dict[str, Any]:
    """The API operation one command sends."""
    if isinstance(command, GrantCommand):
        return command.body()
    if not isinstance(command, RevokeOrder) or not command.refund:
        raise TypeError(f"nothing to revoke with for {command!r}")
    # A revoke takes back exactly what its purchase granted, from that user.
    body: dict[str, Any] = {"user": command.refund["user"], "items": command.refund["items"]}
    if command.request.comment:
        body["comment"] = command.request.comment
    return body


class XsollaInventory:
    """Backend for Xsolla's inventory API."""

    name = "xsolla"

    def __init__(self, client: httpx.Client, *, idempotent: bool):
        self.client = client
        self.on_unknown = OnUnknown.resend if idempotent else OnUnknown.doubt

    @classmethod
    def from_settings(
        cls, settings: Settings, project: ProjectBackend, transport: httpx.BaseTransport | None = None
    ) -> XsollaInventory:
        client = build_client(
            settings,
            project.base_url or settings.xsolla_base_url,
            transport=transport,
            auth=httpx.BasicAuth(settings.xsolla_merchant_id, project.secret(settings.xsolla_api_key)),
        )
        return cls(client, idempotent=settings.xsolla_idempotent)

    def send(self, lane: Lane, commands: list[Sendable]) -> list[OpResult]:
        """One call of at most 50 operations; one result per command."""
        most = KINDS[lane.kind].per_call[self.name]
        if len(commands) > most:
            # Xsolla would drop the surplus silently: never send it. Nothing
            # left us, and the sender splits a refused batch into halves.
            raise errors.InvalidRequest(f"{len(commands)} operations in one call; Xsolla takes {most}: not sent")
        path = f"/v2/project/{lane.project_id}/inventory/{_PATHS[lane.kind]}"
        what = f"POST {path} ({len(commands)} operations)"
        with errors.building(what):
            operations = [operation(c) for c in commands]
            content = orjson.dumps(operations)
        with translated(what):
            response = request(self.client, "POST", path, content=content, headers={"content-type": "application/json"})
        check_status(response, what, names_command=names_item)
        return match_operations(operations, _json(response))

    def refund_data(self, kind: str, command: Sendable, response: Any) -> dict[str, Any] | None:
        """A grant's revoke sends the same user and items to /inventory/revoke."""
        if kind != GRANT or not isinstance(command, GrantCommand):
            return None
        body = command.body()
        return {"user": body["user"], "items": body["items"]}

    def close(self) -> None:
        self.client.close()


def names_item(response: httpx.Response) -> bool:
    """Whether an error is Xsolla's own about an item: "Item with sku = 'x' not
    found", "Failed to remove this number of items"."""
    message = error_message(response, "errorMessage")
    return message is not None and ("item" in message.lower() or "sku" in message.lower())


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    return body if isinstance(body, dict) else {}


def match_operations(sent: list[dict[str, Any]], body: dict[str, Any]) -> list[OpResult]:
    """Pair the answer's operations with what was sent.

    By external_purchase_id when the answer carries it, else by position
    (Xsolla answers in request order), and always with the same user. An
    operation the answer does not mention, or names for another user, was
    not confirmed: it is in doubt, never assumed granted.
    """
    answered: list[Any] = body["operations"] if isinstance(body.get("operations"), list) else []
    # Grants are matched by purchase id; revokes carry none, so by position.
    by_id = {
        op.get("purchase", {}).get("external_purchase_id"): op
        for op in answered
        if isinstance(op, dict) and isinstance(op.get("purchase"), dict)
    }
    results = []
    for i, op in enumerate(sent):
        epid = (op.get("purchase") or {}).get("external_purchase_id")
        match = by_id.get(epid) if epid else None
        if match is None and not by_id and i < len(answered) and isinstance(answered[i], dict):
            match = answered[i]
        # Whichever way it was found, it must be this operation's user: an
        # answer naming someone else for our purchase confirms nothing.
        if match is not None and (match.get("user") or {}).get("id") != op["user"]["id"]:
            results.append(
                OpResult(
                    "in_doubt",
                    error="the backend answered 200 for this operation naming "
                    f"another user ({(match.get('user') or {}).get('id')!r})",
                )
            )
            continue
        if match is None:
            results.append(OpResult("in_doubt", error="the backend answered 200 but did not report this operation"))
        else:
            # What is not in the command already: each item's new balance.
            results.append(OpResult("applied", response={"items": match.get("items")}))
    return results
