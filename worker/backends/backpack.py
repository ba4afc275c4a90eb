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

from schemas.backpack import HOST_ID_HEADER, OPERATION_ID_HEADER
from schemas.paths import segment
from worker import errors
from worker.backends.base import OpResult
from worker.backends.http import build_client, request, check_status, error_message, translated
from worker.settings import Settings


def names_item(response: httpx.Response) -> bool:
    """Whether an error is Backpack's own about an item or user ("Item not found")."""
    message = error_message(response, "message")
    return message is not None and ("item" in message.lower() or "user" in message.lower())


class XsollaBackpack:
    """Backend for Xsolla Backpack (one merchant)."""

    name = "backpack"
    idempotent = False

    def __init__(self, client: httpx.Client, *, merchant_id: str):
        self.client = client
        self.merchant_id = merchant_id

    @classmethod
    def from_settings(cls, settings: Settings, transport: httpx.BaseTransport | None = None) -> "XsollaBackpack":
        client = build_client(
            settings.backpack_base_url,
            auth=None,
            headers={"Authorization": f"Bearer {settings.backpack_token.get_secret_value()}",
                     HOST_ID_HEADER: settings.backpack_host_id},
            connect_timeout=settings.http_connect_timeout_s,
            read_timeout=settings.http_read_timeout_s,
            write_timeout=settings.http_write_timeout_s,
            max_connections=settings.http_max_connections,
            transport=transport,
        )
        return cls(client, merchant_id=settings.backpack_merchant_id or settings.xsolla_merchant_id)

    def _base(self, project_id: int) -> str:
        return f"/web/backpack/merchants/{segment(self.merchant_id)}/projects/{project_id}"

    def send(self, kind: str, project_id: int, commands: list[dict[str, Any]]) -> list[OpResult]:
        """One call per command (a create carries its user's items)."""
        return [self._one(kind, project_id, c) for c in commands]

    def _one(self, kind: str, project_id: int, c: dict[str, Any]) -> OpResult:
        with errors.building(kind):
            headers = {OPERATION_ID_HEADER: c["operation_id"]}
            if kind == "backpack.create":
                path = f"{self._base(project_id)}/user/{segment(c['user_id'])}/{c['item_type']}"
                what = f"POST {path} ({len(c['items'])} items)"
                content = orjson.dumps(c["items"])
            else:
                path = f"{self._base(project_id)}/users/{segment(c['user_id'])}/items/{segment(c['item_id'])}"
                what = f"DELETE {path}"
        with translated(what):
            if kind == "backpack.create":
                response = request(self.client, "POST", path, content=content,
                                   headers={**headers, "content-type": "application/json"})
            else:
                response = request(self.client, "DELETE", path, headers=headers)
        check_status(response, what, names_command=names_item)
        if kind != "backpack.create":
            return OpResult("applied", response={"deleted": c["item_id"]})
        # A 2xx means created; an answer we cannot read does not undo that.
        try:
            created = orjson.loads(response.content or b"[]")
        except orjson.JSONDecodeError:
            return OpResult("applied", response={"items": None, "answer": "not readable JSON"})
        return OpResult("applied", response={"items": created})

    def list_items(self, project_id: int, user_id: str) -> list[dict[str, Any]]:
        """A user's Backpack items (raises worker.errors on failure)."""
        with errors.building("GET items"):
            path = f"{self._base(project_id)}/users/{segment(user_id)}/items"
        with translated(f"GET {path}"):
            response = request(self.client, "GET", path)
        check_status(response, f"GET {path}", names_command=names_item)
        body = orjson.loads(response.content or b"[]")
        return body if isinstance(body, list) else body.get("items", [])

    def refund_data(self, kind: str, command: dict[str, Any], response: Any) -> dict[str, Any] | None:
        """Backpack items are deleted by a command of their own, not revoked."""
        return None

    def close(self) -> None:
        self.client.close()
