"""What the fake backends remember: inventories, an audit trail, catalogs.

Xsolla inventories (balances per SKU), Xsolla Backpack items and PlayFab
players, item instances and virtual currency all live in one SQLite file and
share one audit table, told apart by ``kind``: ``purchase``, ``reward``,
``revoke`` (Xsolla), ``backpack.create``, ``backpack.delete``,
``playfab.grant``, ``playfab.revoke``.

One SQLite file holds everything, so a test or a benchmark can ask afterwards
exactly which operations the "backend" applied and how often. The store is
synchronous and owns a single connection; the app calls it from the event-loop
thread only, one call at a time, which is what makes each API call atomic
without any locking of our own.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

# SQLite's default cap on bound variables is 32766; 400 (user, sku) pairs per
# SELECT stays far below it and still covers a 50-operation call in one query.
_PAIRS_PER_SELECT = 400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL,
    -- 'purchase', 'reward' or 'revoke'. No CHECK constraint: the store is the
    -- only writer, and the CHECK doubled the cost of the audit inserts.
    kind TEXT NOT NULL,
    -- Global number of the operation this item row belongs to: an operation
    -- with three items writes three rows with one number, so counting
    -- operations (not items) is COUNT(DISTINCT operation).
    operation INTEGER NOT NULL,
    external_purchase_id TEXT,
    user_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    -- As sent (always positive); kind says whether it was added or removed.
    quantity NUMERIC NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_purchase
    ON audit (project_id, kind, external_purchase_id);
CREATE TABLE IF NOT EXISTS balances (
    project_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity NUMERIC NOT NULL,
    PRIMARY KEY (project_id, user_id, sku)
);
CREATE TABLE IF NOT EXISTS applied_purchases (
    project_id INTEGER NOT NULL,
    external_purchase_id TEXT NOT NULL,
    PRIMARY KEY (project_id, external_purchase_id)
);
CREATE TABLE IF NOT EXISTS catalog (
    project_id INTEGER NOT NULL,
    sku TEXT NOT NULL,
    PRIMARY KEY (project_id, sku)
);
-- Projects that have a catalog at all. Without it an empty catalog (every SKU
-- unknown) could not be told from no catalog (every SKU exists).
CREATE TABLE IF NOT EXISTS catalog_projects (
    project_id INTEGER PRIMARY KEY
);
-- Xsolla Backpack: one row per created item; body is the item as the list
-- call returns it (JSON). Deleted items keep their row, with deleted_at set.
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
-- PlayFab (one title per sandbox).
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
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Columns the audit table gained after its first release, added to older
# files on open. Null for Xsolla rows.
_AUDIT_ADDED_COLUMNS = {
    # The Backpack item_id or PlayFab ItemInstanceId the row created or removed.
    "item_id": "TEXT",
}
# Columns one may count audit rows by (GET /sandbox/.../counts?by=).
AUDIT_COUNT_COLUMNS = ("external_purchase_id", "item_id", "sku", "user_id")

_SELECT_BALANCE = "SELECT quantity FROM balances WHERE project_id = ? AND user_id = ? AND sku = ?"
_UPSERT_BALANCE = (
    "INSERT INTO balances (project_id, user_id, sku, quantity) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (project_id, user_id, sku) DO UPDATE SET quantity = excluded.quantity"
)
_INSERT_AUDIT = (
    "INSERT INTO audit (project_id, kind, operation, external_purchase_id, user_id, sku, quantity, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


_INSERT_AUDIT_ITEM = (
    "INSERT INTO audit (project_id, kind, operation, external_purchase_id, user_id, sku, quantity, at, item_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _UserRef(Protocol):
    id: str


class _ItemRef(Protocol):
    sku: str
    quantity: int | float


class Operation(Protocol):
    """What the store needs from an operation (a validated pydantic model)."""

    user: _UserRef
    items: Sequence[_ItemRef]


class NotEnough(Exception):
    """A revoke would take a balance below zero; nothing of the call was applied."""

    def __init__(self, index: int, user_id: str, sku: str, have: Any, want: Any) -> None:
        super().__init__(
            f"operation {index}: user {user_id!r} has {have} of {sku!r}, cannot revoke {want}"
        )
        self.index = index
        self.user_id = user_id
        self.sku = sku
        self.have = have
        self.want = want


class Store:
    """SQLite-backed inventories, audit trail, catalogs and applied purchases."""

    def __init__(self, path: str) -> None:
        """Open (creating if needed) the database at ``path``."""
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one API call
        # is exactly one transaction. check_same_thread=False only lets the
        # store be built on one thread and used on the loop thread; calls are
        # still serialised by the event loop.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL is durable against application crashes, which is
        # all a test fake needs, and avoids an fsync per call.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
        for column, decl in _AUDIT_ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE audit ADD COLUMN {column} {decl}")
        row = self._db.execute("SELECT COALESCE(MAX(operation), 0) FROM audit").fetchone()
        self._last_operation: int = row[0]
        # Catalog lookups happen on every call; cache them per project.
        self._catalogs: dict[int, frozenset[str] | None] = {}

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    # ----------------------------------------------------------------- writes

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: taken at once (IMMEDIATE), committed when the
        block ends, rolled back if anything in it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def apply_purchases(
        self, project_id: int, ops: Sequence[Any], idempotent: bool
    ) -> list[dict[str, Any]]:
        """Grant the items of purchase operations, all in one transaction.

        Returns one result per operation, in order, shaped like Xsolla's
        response: ``{"user": {"id"}, "purchase": {"external_purchase_id"},
        "items": [{"sku", "quantity", "balance"}]}`` where ``balance`` is the
        user's balance of that SKU right after the item was applied. With
        ``idempotent`` an external_purchase_id already applied in this project
        (earlier, or earlier in this same call) is not applied again and writes
        no audit row; its result reports the current balances.
        """
        return self._apply(project_id, "purchase", ops, sign=1, idempotent=idempotent)

    def apply_rewards(self, project_id: int, ops: Sequence[Operation]) -> list[dict[str, Any]]:
        """Grant the items of reward operations (no purchase), in one transaction."""
        return self._apply(project_id, "reward", ops, sign=1, idempotent=False)

    def apply_revokes(self, project_id: int, ops: Sequence[Operation]) -> list[dict[str, Any]]:
        """Remove items, in one transaction; all or nothing.

        Raises NotEnough (and applies nothing of the call) if any item would
        take a balance below zero, counting earlier operations of the same call.
        """
        return self._apply(project_id, "revoke", ops, sign=-1, idempotent=False)

    def _apply(
        self, project_id: int, kind: str, ops: Sequence[Any], sign: int, idempotent: bool
    ) -> list[dict[str, Any]]:
        db = self._db
        is_purchase = kind == "purchase"
        with self._transaction():
            balances = self._load_balances(
                project_id, {(op.user.id, item.sku) for op in ops for item in op.items}
            )
            already: set[str] = set()
            if is_purchase and idempotent:
                already = self._applied_ids(
                    project_id, {op.purchase.external_purchase_id for op in ops}
                )
            now = time.time()
            operation = self._last_operation
            audit_rows: list[tuple[Any, ...]] = []
            new_applied: list[tuple[int, str]] = []
            touched: set[tuple[str, str]] = set()
            results: list[dict[str, Any]] = []
            for index, op in enumerate(ops):
                user_id = op.user.id
                epid = op.purchase.external_purchase_id if is_purchase else None
                apply = True
                if idempotent and is_purchase:
                    if epid in already:
                        apply = False
                    else:
                        already.add(epid)
                        new_applied.append((project_id, epid))
                if apply:
                    operation += 1
                items_out = []
                for item in op.items:
                    key = (user_id, item.sku)
                    balance = balances.get(key, 0)
                    if apply:
                        balance = balance + sign * item.quantity
                        if balance < 0:
                            raise NotEnough(index, user_id, item.sku, balances.get(key, 0), item.quantity)
                        balances[key] = balance
                        touched.add(key)
                        audit_rows.append(
                            (project_id, kind, operation, epid, user_id, item.sku, item.quantity, now)
                        )
                    items_out.append({"sku": item.sku, "quantity": item.quantity, "balance": balance})
                result: dict[str, Any] = {"user": {"id": user_id}}
                if is_purchase:
                    result["purchase"] = {"external_purchase_id": epid}
                result["items"] = items_out
                results.append(result)
            db.executemany(
                _UPSERT_BALANCE,
                [(project_id, u, s, balances[(u, s)]) for (u, s) in touched],
            )
            db.executemany(_INSERT_AUDIT, audit_rows)
            if new_applied:
                db.executemany(
                    "INSERT INTO applied_purchases (project_id, external_purchase_id) VALUES (?, ?)",
                    new_applied,
                )
        # Only advanced once the rows carrying these numbers are committed.
        self._last_operation = operation
        return results

    def _load_balances(
        self, project_id: int, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], Any]:
        # One primary-key lookup per (user, sku). A single row-value
        # "(user_id, sku) IN (VALUES ...)" looked cheaper but SQLite only uses
        # the project_id prefix of the key for it and scans every balance of
        # the project: 3 ms a call at 25,000 balances and growing.
        out: dict[tuple[str, str], Any] = {}
        execute = self._db.execute
        for user_id, sku in pairs:
            row = execute(_SELECT_BALANCE, (project_id, user_id, sku)).fetchone()
            if row is not None:
                out[(user_id, sku)] = row[0]
        return out

    def _applied_ids(self, project_id: int, epids: set[str]) -> set[str]:
        found: set[str] = set()
        epid_list = list(epids)
        for start in range(0, len(epid_list), _PAIRS_PER_SELECT):
            chunk = epid_list[start : start + _PAIRS_PER_SELECT]
            marks = ",".join("?" for _ in chunk)
            rows = self._db.execute(
                "SELECT external_purchase_id FROM applied_purchases "
                f"WHERE project_id = ? AND external_purchase_id IN ({marks})",
                [project_id, *chunk],
            )
            found.update(r[0] for r in rows)
        return found

    # ---------------------------------------------------------------- catalog

    def set_catalog(self, project_id: int, skus: Iterable[str] | None) -> None:
        """Give a project a catalog (only these SKUs exist), or remove it (None)."""
        db = self._db
        with self._transaction():
            db.execute("DELETE FROM catalog WHERE project_id = ?", (project_id,))
            db.execute("DELETE FROM catalog_projects WHERE project_id = ?", (project_id,))
            if skus is not None:
                db.execute("INSERT INTO catalog_projects (project_id) VALUES (?)", (project_id,))
                db.executemany(
                    "INSERT OR IGNORE INTO catalog (project_id, sku) VALUES (?, ?)",
                    [(project_id, sku) for sku in skus],
                )
        self._catalogs.pop(project_id, None)

    def catalog(self, project_id: int) -> frozenset[str] | None:
        """The project's SKUs, or None when it has no catalog."""
        try:
            return self._catalogs[project_id]
        except KeyError:
            pass
        has = self._db.execute(
            "SELECT 1 FROM catalog_projects WHERE project_id = ?", (project_id,)
        ).fetchone()
        skus: frozenset[str] | None = None
        if has:
            rows = self._db.execute("SELECT sku FROM catalog WHERE project_id = ?", (project_id,))
            skus = frozenset(r[0] for r in rows)
        self._catalogs[project_id] = skus
        return skus

    def unknown_skus(self, project_id: int, skus: Iterable[str]) -> list[str]:
        """SKUs (in first-seen order, once each) that the project's catalog lacks.

        Empty when the project has no catalog: then every SKU exists.
        """
        known = self.catalog(project_id)
        if known is None:
            return []
        seen: dict[str, None] = {}
        for sku in skus:
            if sku not in known:
                seen.setdefault(sku, None)
        return list(seen)

    # ------------------------------------------------------------------ reads

    def audit(
        self, project_id: int | None = None, after_id: int = 0, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Audit rows (one per item applied) with id > after_id, oldest first."""
        if project_id is None:
            rows = self._db.execute(
                "SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM audit WHERE project_id = ? AND id > ? ORDER BY id LIMIT ?",
                (project_id, after_id, limit),
            )
        cols = [d[0] for d in rows.description]
        out = []
        for r in rows:
            entry = dict(zip(cols, r))
            # Columns added for Backpack/PlayFab are left out where null, so
            # Xsolla rows look exactly as they always did.
            for column in _AUDIT_ADDED_COLUMNS:
                if entry.get(column, 0) is None:
                    del entry[column]
            out.append(entry)
        return out

    def audit_counts(self, project_id: int | None, kind: str = "purchase") -> dict[str, int]:
        """How many operations were applied per external_purchase_id.

        Each operation counts once however many items it had; rows without an
        external_purchase_id (rewards, revokes) are left out.
        """
        sql = (
            "SELECT external_purchase_id, COUNT(DISTINCT operation) FROM audit "
            "WHERE kind = ? AND external_purchase_id IS NOT NULL"
        )
        params: list[Any] = [kind]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        sql += " GROUP BY external_purchase_id"
        return {epid: n for epid, n in self._db.execute(sql, params)}

    def balances(self, project_id: int | None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Current balances, optionally for one project and/or one user."""
        sql = "SELECT project_id, user_id, sku, quantity FROM balances"
        where: list[str] = []
        params: list[Any] = []
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY project_id, user_id, sku"
        return [
            {"project_id": p, "user_id": u, "sku": s, "quantity": q}
            for p, u, s, q in self._db.execute(sql, params)
        ]

    def audit_counts_by(
        self, kind: str, column: str = "external_purchase_id", project_id: int | None = None
    ) -> dict[str, dict[str, int]]:
        """Per value of ``column`` (one of AUDIT_COUNT_COLUMNS) among rows of
        ``kind``: ``{"calls": {value: distinct applying calls}, "rows": {value:
        rows}}``. Rows where the column is null are left out."""
        if column not in AUDIT_COUNT_COLUMNS:
            raise ValueError(f"column must be one of {', '.join(AUDIT_COUNT_COLUMNS)}")
        sql = (
            f"SELECT {column}, COUNT(DISTINCT operation), COUNT(*) FROM audit "
            f"WHERE kind = ? AND {column} IS NOT NULL"
        )
        params: list[Any] = [kind]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        sql += f" GROUP BY {column}"
        calls: dict[str, int] = {}
        rows: dict[str, int] = {}
        for value, n_calls, n_rows in self._db.execute(sql, params):
            calls[value] = n_calls
            rows[value] = n_rows
        return {"calls": calls, "rows": rows}

    # ------------------------------------------------------------- key/value

    def get_json(self, key: str) -> Any:
        """The JSON value stored under ``key``, or None."""
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``; None deletes it."""
        if value is None:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # --------------------------------------------------------------- backpack

    def bp_metaframe_vc(self, project_id: int) -> bool:
        """Whether the project has a Metaframe virtual currency configured."""
        row = self._db.execute(
            "SELECT metaframe_vc FROM bp_projects WHERE project_id = ?", (project_id,)
        ).fetchone()
        return bool(row and row[0])

    def bp_set_metaframe_vc(self, project_id: int, on: bool) -> None:
        self._db.execute(
            "INSERT INTO bp_projects (project_id, metaframe_vc) VALUES (?, ?) "
            "ON CONFLICT (project_id) DO UPDATE SET metaframe_vc = excluded.metaframe_vc",
            (project_id, int(on)),
        )

    def bp_create(
        self, merchant_id: int, project_id: int, user_id: str, items: Sequence[dict[str, Any]],
        operation_id: str | None,
    ) -> None:
        """Store created Backpack items (list-shaped dicts with ``item_id``) and
        audit them (kind ``backpack.create``), in one transaction."""
        db = self._db
        now = time.time()
        with self._transaction():
            operation = self._last_operation + 1
            db.executemany(
                "INSERT INTO bp_items (item_id, merchant_id, project_id, user_id, item_type, "
                "operation_id, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(it["item_id"], merchant_id, project_id, user_id, it["item_type"], operation_id,
                  json.dumps(it)) for it in items],
            )
            db.executemany(
                _INSERT_AUDIT_ITEM,
                [(project_id, "backpack.create", operation, operation_id, user_id, it["item_sku"],
                  it.get("quantity") or 1, now, it["item_id"]) for it in items],
            )
        self._last_operation = operation

    def bp_list(
        self, merchant_id: int, project_id: int, user_id: str, offset: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """A user's (undeleted) Backpack items, oldest first."""
        rows = self._db.execute(
            "SELECT body FROM bp_items WHERE merchant_id = ? AND project_id = ? AND user_id = ? "
            "AND deleted_at IS NULL ORDER BY seq LIMIT ? OFFSET ?",
            (merchant_id, project_id, user_id, -1 if limit is None else limit, offset),
        )
        return [json.loads(r[0]) for r in rows]

    def bp_delete(self, merchant_id: int, project_id: int, user_id: str, item_id: str) -> bool:
        """Delete one of the user's items (audit ``backpack.delete``); False if
        there is no such undeleted item."""
        db = self._db
        with self._transaction():
            row = db.execute(
                "SELECT seq, operation_id, body FROM bp_items WHERE item_id = ? AND merchant_id = ? "
                "AND project_id = ? AND user_id = ? AND deleted_at IS NULL",
                (item_id, merchant_id, project_id, user_id),
            ).fetchone()
            if row is None:
                return False
            now = time.time()
            operation = self._last_operation + 1
            body = json.loads(row[2])
            db.execute("UPDATE bp_items SET deleted_at = ? WHERE seq = ?", (now, row[0]))
            db.execute(
                _INSERT_AUDIT_ITEM,
                (project_id, "backpack.delete", operation, row[1], user_id, body["item_sku"],
                 body.get("quantity") or 1, now, item_id),
            )
        self._last_operation = operation
        return True

    def bp_items(
        self, merchant_id: int | None = None, project_id: int | None = None,
        user_id: str | None = None, include_deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Backpack items for the admin API: each item plus ``user_id``,
        ``operation_id`` and ``deleted`` (bool)."""
        sql = "SELECT user_id, operation_id, deleted_at, body FROM bp_items"
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("merchant_id", merchant_id), ("project_id", project_id),
                              ("user_id", user_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if not include_deleted:
            where.append("deleted_at IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        out = []
        for user, operation_id, deleted_at, body in self._db.execute(sql, params):
            item = json.loads(body)
            item.update(user_id=user, operation_id=operation_id, deleted=deleted_at is not None)
            out.append(item)
        return out

    # ---------------------------------------------------------------- playfab

    def pf_create_players(
        self, playfab_ids: Iterable[str], currencies: dict[str, int] | None = None
    ) -> None:
        """Create players (existing ones are kept) and set their currencies."""
        db = self._db
        now = time.time()
        ids = list(playfab_ids)
        with self._transaction():
            db.executemany(
                "INSERT OR IGNORE INTO pf_players (playfab_id, created_at) VALUES (?, ?)",
                [(pid, now) for pid in ids],
            )
            if currencies:
                db.executemany(
                    "INSERT INTO pf_currencies (playfab_id, code, amount) VALUES (?, ?, ?) "
                    "ON CONFLICT (playfab_id, code) DO UPDATE SET amount = excluded.amount",
                    [(pid, code, amount) for pid in ids for code, amount in currencies.items()],
                )

    def pf_existing_players(self, playfab_ids: Iterable[str]) -> set[str]:
        """Which of ``playfab_ids`` are players."""
        execute = self._db.execute
        return {
            pid for pid in set(playfab_ids)
            if execute("SELECT 1 FROM pf_players WHERE playfab_id = ?", (pid,)).fetchone()
        }

    def pf_players(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT playfab_id FROM pf_players ORDER BY playfab_id")]

    def pf_grant(
        self, grants: Sequence[dict[str, Any]], create_players: Iterable[str] = ()
    ) -> list[str]:
        """Create item instances, in one transaction; returns their ItemInstanceIds.

        Each grant: ``playfab_id``, ``character_id``, ``item_id``,
        ``annotation``, ``body`` (the instance without ItemInstanceId) and
        ``currencies`` ({code: amount} added to the player). Players in
        ``create_players`` are created first. Audited as ``playfab.grant``
        (external_purchase_id = Annotation, item_id = ItemInstanceId), all rows
        of the call under one operation number.
        """
        db = self._db
        now = time.time()
        instance_ids: list[str] = []
        with self._transaction():
            db.executemany(
                "INSERT OR IGNORE INTO pf_players (playfab_id, created_at) VALUES (?, ?)",
                [(pid, now) for pid in create_players],
            )
            operation = self._last_operation + 1
            audit_rows = []
            for grant in grants:
                # 16 upper-case hex digits, the look of PlayFab's instance ids.
                instance_id = secrets.token_hex(8).upper()
                body = dict(grant["body"], ItemInstanceId=instance_id)
                db.execute(
                    "INSERT INTO pf_items (instance_id, playfab_id, character_id, item_id, annotation, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (instance_id, grant["playfab_id"], grant["character_id"], grant["item_id"],
                     grant["annotation"], json.dumps(body)),
                )
                for code, amount in (grant.get("currencies") or {}).items():
                    db.execute(
                        "INSERT INTO pf_currencies (playfab_id, code, amount) VALUES (?, ?, ?) "
                        "ON CONFLICT (playfab_id, code) DO UPDATE SET amount = amount + excluded.amount",
                        (grant["playfab_id"], code, amount),
                    )
                audit_rows.append((0, "playfab.grant", operation, grant["annotation"],
                                   grant["playfab_id"], grant["item_id"], 1, now, instance_id))
                instance_ids.append(instance_id)
            db.executemany(_INSERT_AUDIT_ITEM, audit_rows)
        if audit_rows:
            self._last_operation = operation
        return instance_ids

    def pf_inventory(
        self, playfab_id: str, characters: bool = False
    ) -> list[dict[str, Any]]:
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

    def pf_currencies(self, playfab_id: str) -> dict[str, int]:
        return {
            code: amount for code, amount in self._db.execute(
                "SELECT code, amount FROM pf_currencies WHERE playfab_id = ? ORDER BY code",
                (playfab_id,),
            )
        }

    def pf_revoke(
        self, items: Sequence[tuple[str, str, str | None]], known_players: set[str]
    ) -> list[tuple[int, str]]:
        """Revoke (PlayFabId, ItemInstanceId, CharacterId) items in one
        transaction. Returns (index, GenericErrorCodes name) for each item not
        revoked: ``AccountNotFound`` when the player is not in
        ``known_players``, ``ItemNotFound`` when the player (or that
        character) holds no such unrevoked instance. Revocations are audited
        as ``playfab.revoke`` (external_purchase_id = the instance's
        Annotation, item_id = ItemInstanceId)."""
        db = self._db
        now = time.time()
        errors: list[tuple[int, str]] = []
        with self._transaction():
            operation = self._last_operation + 1
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
                db.execute("UPDATE pf_items SET revoked_at = ? WHERE seq = ?", (now, row[0]))
                audit_rows.append((0, "playfab.revoke", operation, row[2], playfab_id, row[1], 1,
                                   now, instance_id))
            db.executemany(_INSERT_AUDIT_ITEM, audit_rows)
        if audit_rows:
            self._last_operation = operation
        return errors
