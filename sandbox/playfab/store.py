"""What the fake PlayFab title remembers: players, their item instances and currencies.

Its tables live in the shared ``sandbox.store.Store`` file (one title per
sandbox); grants and revokes are audited there with ``project_id`` 0 (kinds
``playfab.grant``, ``playfab.revoke``; ``external_purchase_id`` is the
instance's Annotation, ``item_id`` its ItemInstanceId). The title's catalog is
kept in the shared key/value table.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pf_players (
    playfab_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pf_currencies (
    playfab_id TEXT NOT NULL,
    code TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (playfab_id, code)
);
CREATE TABLE IF NOT EXISTS pf_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL UNIQUE,
    playfab_id TEXT NOT NULL,
    character_id TEXT,
    item_id TEXT NOT NULL,
    annotation TEXT,
    -- The instance as GetUserInventory returns it (JSON, no null fields).
    body TEXT NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS pf_items_by_player ON pf_items (playfab_id, seq);
"""

_CATALOG_KEY = "playfab.catalog"
_ADD_PLAYERS = "INSERT OR IGNORE INTO pf_players (playfab_id, created_at) VALUES (?, ?)"


class PlayFabStore:
    """Players, item instances and virtual currency of the one title."""

    def __init__(self, store: Store) -> None:
        """Add the PlayFab tables to ``store``."""
        store.add_schema(_SCHEMA)
        self._store = store
        self._db = store.db

    # ---------------------------------------------------------------- catalog

    def catalog(self) -> Any:
        """The stored catalog config (JSON), or None."""
        return self._store.get_json(_CATALOG_KEY)

    def set_catalog(self, catalog: Any) -> None:
        """Store the catalog config (JSON); None removes it."""
        self._store.set_json(_CATALOG_KEY, catalog)

    # ---------------------------------------------------------------- players

    def create_players(self, playfab_ids: Iterable[str], currencies: dict[str, int] | None = None) -> None:
        """Create players (existing ones are kept) and set their currencies."""
        now = time.time()
        ids = list(playfab_ids)
        with self._store.write():
            self._db.executemany(_ADD_PLAYERS, [(pid, now) for pid in ids])
            if currencies:
                self._db.executemany(
                    "INSERT INTO pf_currencies (playfab_id, code, amount) VALUES (?, ?, ?) "
                    "ON CONFLICT (playfab_id, code) DO UPDATE SET amount = excluded.amount",
                    [(pid, code, amount) for pid in ids for code, amount in currencies.items()],
                )

    def existing_players(self, playfab_ids: Iterable[str]) -> set[str]:
        """Which of ``playfab_ids`` are players."""
        execute = self._db.execute
        return {
            pid
            for pid in set(playfab_ids)
            if execute("SELECT 1 FROM pf_players WHERE playfab_id = ?", (pid,)).fetchone()
        }

    def players(self) -> list[str]:
        """Every player's PlayFabId, sorted."""
        return [r[0] for r in self._db.execute("SELECT playfab_id FROM pf_players ORDER BY playfab_id")]

    # ------------------------------------------------------------------ items

    def grant(self, grants: Sequence[dict[str, Any]], create_players: Iterable[str] = ()) -> list[str]:
        """Create item instances, in one transaction; returns their ItemInstanceIds.

        Each grant: ``playfab_id``, ``character_id``, ``item_id``,
        ``annotation``, ``body`` (the instance without ItemInstanceId) and
        ``currencies`` ({code: amount} added to the player). Players in
        ``create_players`` are created first. Audited as ``playfab.grant``,
        all rows of the call under one operation number.
        """
        db = self._db
        now = time.time()
        instance_ids: list[str] = []
        with self._store.write() as numbers:
            db.executemany(_ADD_PLAYERS, [(pid, now) for pid in create_players])
            operation = numbers.take() if grants else 0
            audit_rows = []
            for grant in grants:
                # 16 upper-case hex digits, the look of PlayFab's instance ids.
                instance_id = secrets.token_hex(8).upper()
                body = dict(grant["body"], ItemInstanceId=instance_id)
                db.execute(
                    "INSERT INTO pf_items (instance_id, playfab_id, character_id, item_id, annotation, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        instance_id,
                        grant["playfab_id"],
                        grant["character_id"],
                        grant["item_id"],
                        grant["annotation"],
                        json.dumps(body),
                    ),
                )
                for code, amount in (grant.get("currencies") or {}).items():
                    db.execute(
                        "INSERT INTO pf_currencies (playfab_id, code, amount) VALUES (?, ?, ?) "
                        "ON CONFLICT (playfab_id, code) DO UPDATE SET amount = amount + excluded.amount",
                        (grant["playfab_id"], code, amount),
                    )
                audit_rows.append(
                    (
                        0,
                        "playfab.grant",
                        operation,
                        grant["annotation"],
                        grant["playfab_id"],
                        grant["item_id"],
                        1,
                        now,
                        instance_id,
                    )
                )
                instance_ids.append(instance_id)
            self._store.add_audit(audit_rows)
        return instance_ids

    def inventory(self, playfab_id: str, characters: bool = False) -> list[dict[str, Any]]:
        """The player's unrevoked instances, oldest first: only those outside
        any character unless ``characters`` (then each carries CharacterId)."""
        sql = "SELECT character_id, body FROM pf_items WHERE playfab_id = ? AND revoked_at IS NULL"
        if not characters:
            sql += " AND character_id IS NULL"
        out = []
        for character_id, body in self._db.execute(sql + " ORDER BY seq", (playfab_id,)):
            item = json.loads(body)
            if characters and character_id is not None:
                item["CharacterId"] = character_id
            out.append(item)
        return out

    def currencies(self, playfab_id: str) -> dict[str, int]:
        """The player's virtual currency balances, by code."""
        return {
            code: amount
            for code, amount in self._db.execute(
                "SELECT code, amount FROM pf_currencies WHERE playfab_id = ? ORDER BY code",
                (playfab_id,),
            )
        }

    def revoke(self, items: Sequence[tuple[str, str, str | None]], known_players: set[str]) -> list[tuple[int, str]]:
        """Revoke (PlayFabId, ItemInstanceId, CharacterId) items in one
        transaction. Returns (index, GenericErrorCodes name) for each item not
        revoked: ``AccountNotFound`` when the player is not in
        ``known_players``, ``ItemNotFound`` when the player (or that
        character) holds no such unrevoked instance. Revocations are audited
        as ``playfab.revoke``."""
        db = self._db
        now = time.time()
        errors: list[tuple[int, str]] = []
        with self._store.write() as numbers:
            operation = 0
            audit_rows = []
            for index, (playfab_id, instance_id, character_id) in enumerate(items):
                if playfab_id not in known_players:
                    errors.append((index, "AccountNotFound"))
                    continue
                row = db.execute(
                    "SELECT seq, item_id, annotation FROM pf_items WHERE instance_id = ? "
                    "AND playfab_id = ? AND character_id IS ? AND revoked_at IS NULL",
                    (instance_id, playfab_id, character_id),
                ).fetchone()
                if row is None:
                    errors.append((index, "ItemNotFound"))
                    continue
                # One number for the call, taken only once it revokes something.
                operation = operation or numbers.take()
                db.execute("UPDATE pf_items SET revoked_at = ? WHERE seq = ?", (now, row[0]))
                audit_rows.append((0, "playfab.revoke", operation, row[2], playfab_id, row[1], 1, now, instance_id))
            self._store.add_audit(audit_rows)
        return errors
