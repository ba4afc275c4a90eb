"""What the fake Backpack remembers: each user's items and each project's VC setting.

Its tables live in the shared ``sandbox.store.Store`` file; each create and
delete is audited there (kinds ``backpack.create``, ``backpack.delete``;
``external_purchase_id`` is the caller's operation id, ``item_id`` the
Backpack item's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sandbox.store import Store, where

_SCHEMA = """
-- One row per created item; body is the item as the list call returns it
-- (JSON). Deleted items keep their row, with deleted_at set.
CREATE TABLE IF NOT EXISTS bp_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    merchant_id INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    item_type TEXT NOT NULL,
    operation_id TEXT,
    body TEXT NOT NULL,
    deleted_at REAL
);
CREATE INDEX IF NOT EXISTS bp_items_by_user ON bp_items (merchant_id, project_id, user_id, seq);
CREATE TABLE IF NOT EXISTS bp_projects (
    project_id INTEGER PRIMARY KEY,
    metaframe_vc INTEGER NOT NULL
);
"""


class BackpackStore:
    """Backpack items and project settings, in the shared store's file."""

    def __init__(self, store: Store) -> None:
        """Add the Backpack tables to ``store``."""
        store.add_schema(_SCHEMA)
        self._store = store
        self._db = store.db

    def metaframe_vc(self, project_id: int) -> bool:
        """Whether the project has a Metaframe virtual currency configured."""
        row = self._db.execute("SELECT metaframe_vc FROM bp_projects WHERE project_id = ?", (project_id,)).fetchone()
        return bool(row and row[0])

    def set_metaframe_vc(self, project_id: int, on: bool) -> None:
        """Configure (or not) a Metaframe virtual currency for the project."""
        self._db.execute(
            "INSERT INTO bp_projects (project_id, metaframe_vc) VALUES (?, ?) "
            "ON CONFLICT (project_id) DO UPDATE SET metaframe_vc = excluded.metaframe_vc",
            (project_id, int(on)),
        )

    def create(
        self,
        merchant_id: int,
        project_id: int,
        user_id: str,
        items: Sequence[dict[str, Any]],
        operation_id: str | None,
    ) -> None:
        """Store created items (list-shaped dicts with ``item_id``) and audit
        them (kind ``backpack.create``), in one transaction."""
        now = time.time()
        with self._store.write() as numbers:
            operation = numbers.take()
            self._db.executemany(
                "INSERT INTO bp_items (item_id, merchant_id, project_id, user_id, item_type, "
                "operation_id, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (it["item_id"], merchant_id, project_id, user_id, it["item_type"], operation_id, json.dumps(it))
                    for it in items
                ],
            )
            self._store.add_audit(
                (
                    project_id,
                    "backpack.create",
                    operation,
                    operation_id,
                    user_id,
                    it["item_sku"],
                    it.get("quantity") or 1,
                    now,
                    it["item_id"],
                )
                for it in items
            )

    def user_items(
        self,
        merchant_id: int,
        project_id: int,
        user_id: str,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """A user's (undeleted) items, oldest first."""
        rows = self._db.execute(
            "SELECT body FROM bp_items WHERE merchant_id = ? AND project_id = ? AND user_id = ? "
            "AND deleted_at IS NULL ORDER BY seq LIMIT ? OFFSET ?",
            (merchant_id, project_id, user_id, -1 if limit is None else limit, offset),
        )
        return [json.loads(r[0]) for r in rows]

    def delete(self, merchant_id: int, project_id: int, user_id: str, item_id: str) -> bool:
        """Delete one of the user's items (audit ``backpack.delete``); False if
        there is no such undeleted item."""
        db = self._db
        with self._store.write() as numbers:
            row = db.execute(
                "SELECT seq, operation_id, body FROM bp_items WHERE item_id = ? AND merchant_id = ? "
                "AND project_id = ? AND user_id = ? AND deleted_at IS NULL",
                (item_id, merchant_id, project_id, user_id),
            ).fetchone()
            if row is None:
                return False
            now = time.time()
            body = json.loads(row[2])
            db.execute("UPDATE bp_items SET deleted_at = ? WHERE seq = ?", (now, row[0]))
            self._store.add_audit(
                [
                    (
                        project_id,
                        "backpack.delete",
                        numbers.take(),
                        row[1],
                        user_id,
                        body["item_sku"],
                        body.get("quantity") or 1,
                        now,
                        item_id,
                    ),
                ]
            )
        return True

    def items(
        self,
        merchant_id: int | None = None,
        project_id: int | None = None,
        user_id: str | None = None,
        include_deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Items for the admin API: each item plus ``user_id``,
        ``operation_id`` and ``deleted`` (bool)."""
        clause, params = where(
            (("merchant_id", merchant_id), ("project_id", project_id), ("user_id", user_id)),
            () if include_deleted else ("deleted_at IS NULL",),
        )
        sql = f"SELECT user_id, operation_id, deleted_at, body FROM bp_items{clause} ORDER BY seq"
        out = []
        for user, operation_id, deleted_at, body in self._db.execute(sql, params):
            item = json.loads(body)
            item.update(user_id=user, operation_id=operation_id, deleted=deleted_at is not None)
            out.append(item)
        return out
