"""Xsolla Backpack: create items in a user's Backpack, delete one, list them.

Paths as in Xsolla's Backpack API, singular ``user/`` for creates and plural
``users/`` for delete and list:

    POST   /web/backpack/merchants/{m}/projects/{p}/user/{u}/game_keys|virtual_items|virtual_currency|promo_codes
    DELETE /web/backpack/merchants/{m}/projects/{p}/users/{u}/items/{item}
    GET    /web/backpack/merchants/{m}/projects/{p}/users/{u}/items

Auth: a bearer token plus the ``X-HOST-ID`` header. A create carries up to
100 items for one user; one command is one call. Not idempotent and not
reconcilable (a created item carries nothing of ours to find it by): a lost
answer makes the command in_doubt. The producer's operation id travels in
``X-Operation-Id`` for the backend's logs.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from schemas.backpack import CREATE_PATHS, CREATE_RESPONSES, HOST_ID_HEADER, LIST_ITEMS_RESPONSE, OPERATION_ID_HEADER
from schemas.commands import BackpackCreateCommand, BackpackDeleteCommand
from schemas.paths import segment
from worker import errors
from worker.backends.base import OpResult
from worker.backends.http import build_client, check_status, error_message, request, translated
from worker.settings import ProjectBackend, Settings
from worker.work import Lane, OnUnknown, Sendable


def names_item(response: httpx.Response) -> bool:
    """Whether an error is Backpack's own about an item or user ("Item not found")."""
    message = error_message(response, "message")
    return message is not None and ("item" in message.lower() or "user" in message.lower())


class XsollaBackpack:
    """Backend for Xsolla Backpack (one merchant)."""

    name = "backpack"
    on_unknown = OnUnknown.doubt

    def __init__(self, client: httpx.Client, *, merchant_id: str):
        self.client = client
        self.merchant_id = merchant_id

    @classmethod
    def from_settings(
        cls, settings: Settings, project: ProjectBackend, transport: httpx.BaseTransport | None = None
    ) -> XsollaBackpack:
        client = build_client(
            settings,
            project.base_url or settings.backpack_base_url,
            transport=transport,
            headers={
                "Authorization": f"Bearer {settings.backpack_token.get_secret_value()}",
                HOST_ID_HEADER: settings.backpack_host_id,
            },
        )
        return cls(client, merchant_id=settings.backpack_merchant_id or settings.xsolla_merchant_id)

    def _base(self, project_id: int) -> str:
        return f"/web/backpack/merchants/{segment(self.merchant_id)}/projects/{project_id}"

    def send(self, lane: Lane, commands: list[Sendable]) -> list[OpResult]:
        """One call per command (a create carries its user's items)."""
        return [self._one(lane.project_id, c) for c in commands]

    def _one(self, project_id: int, command: Sendable) -> OpResult:
        if isinstance(command, BackpackCreateCommand):
            return self._create(project_id, command)
        if isinstance(command, BackpackDeleteCommand):
            return self._delete(project_id, command)
        raise errors.NotSent(f"Backpack does not take {type(command).__name__}")

    def _create(self, project_id: int, command: BackpackCreateCommand) -> OpResult:
        with errors.building(command.kind):
            path = f"{self._base(project_id)}/user/{segment(command.user_id)}/{command.item_type}"
            content = orjson.dumps(command.items)
        what = f"POST {path} ({len(command.items)} items)"
        with translated(what):
            response = request(
                self.client,
                "POST",
                path,
                content=content,
                headers={OPERATION_ID_HEADER: command.operation_id, "content-type": "application/json"},
            )
        check_status(response, what, names_command=names_item)
        # A 2xx means created; an answer not as documented does not undo that.
        try:
            created = CREATE_RESPONSES[CREATE_PATHS[command.item_type]].validate_json(response.content or b"[]")
        except ValidationError as exc:
            return OpResult(
                "applied", response={"items": None, "answer": f"not as documented: {exc.error_count()} problems"}
            )
        return OpResult("applied", response={"items": [c.model_dump(mode="json", exclude_none=True) for c in created]})

    def _delete(self, project_id: int, command: BackpackDeleteCommand) -> OpResult:
        with errors.building(command.kind):
            path = f"{self._base(project_id)}/users/{segment(command.user_id)}/items/{segment(command.item_id)}"
        what = f"DELETE {path}"
        with translated(what):
            response = request(self.client, "DELETE", path, headers={OPERATION_ID_HEADER: command.operation_id})
        check_status(response, what, names_command=names_item)
        return OpResult("applied", response={"deleted": command.item_id})

    def list_items(self, project_id: int, user_id: str) -> list[dict[str, Any]]:
        """A user's Backpack items, as the API lists them (raises worker.errors on failure)."""
        with errors.building("GET items"):
            path = f"{self._base(project_id)}/users/{segment(user_id)}/items"
        with translated(f"GET {path}"):
            response = request(self.client, "GET", path)
        check_status(response, f"GET {path}", names_command=names_item)
        try:
            items = LIST_ITEMS_RESPONSE.validate_json(response.content or b"[]")
        except ValidationError as exc:
            raise errors.OutcomeUnknown(
                f"GET {path}: an answer not as documented ({exc.error_count()} problems)", status=response.status_code
            ) from None
        return [i.model_dump(mode="json", exclude_none=True) for i in items]

    def refund_data(self, kind: str, command: Sendable, response: Any) -> dict[str, Any] | None:
        """Backpack items are deleted by a command of their own, not revoked."""
        return None

    def close(self) -> None:
        self.client.close()
