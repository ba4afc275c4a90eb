"""What the fake Xsolla remembers: inventories, an audit trail, catalogs.

One SQLite file holds everything, so a test or a benchmark can ask afterwards
exactly which operations the "backend" applied and how often. The store is
synchronous and owns a single connection; the app calls it from the event-loop
thread only, one call at a time, which is what makes each API call atomic
without any locking of our own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
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
"""

_SELECT_BALANCE = "SELECT quantity FROM balances WHERE project_id = ? AND user_id = ? AND sku = ?"
_UPSERT_BALANCE = (
    "INSERT INTO balances (project_id, user_id, sku, quantity) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (project_id, user_id, sku) DO UPDATE SET quantity = excluded.quantity"
)
_INSERT_AUDIT = (
    "INSERT INTO audit (project_id, kind, operation, external_purchase_id, user_id, sku, quantity, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
        row = self._db.execute("SELECT COALESCE(MAX(operation), 0) FROM audit").fetchone()
        self._last_operation: int = row[0]
        # Catalog lookups happen on every call; cache them per project.
        self._catalogs: dict[int, frozenset[str] | None] = {}

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    # ----------------------------------------------------------------- writes

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
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM catalog WHERE project_id = ?", (project_id,))
            db.execute("DELETE FROM catalog_projects WHERE project_id = ?", (project_id,))
            if skus is not None:
                db.execute("INSERT INTO catalog_projects (project_id) VALUES (?)", (project_id,))
                db.executemany(
                    "INSERT OR IGNORE INTO catalog (project_id, sku) VALUES (?, ?)",
                    [(project_id, sku) for sku in skus],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        return [dict(zip(cols, r)) for r in rows]

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
