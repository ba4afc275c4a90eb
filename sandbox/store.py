"""The one SQLite file every fake backend keeps its state in, and the audit.

``Store`` owns the connection, the write transactions, the audit table and a
small key/value table. Each API's store (``sandbox.xsolla.store``,
``sandbox.backpack.store``, ``sandbox.playfab.store``) adds its own tables to
the same file and writes its audit rows here, told apart by ``kind``:
``purchase``, ``reward``, ``revoke`` (Xsolla), ``backpack.create``,
``backpack.delete``, ``playfab.grant``, ``playfab.revoke``.

One file holds everything, so a test or a benchmark can ask afterwards
exactly which operations the "backend" applied and how often. The store is
synchronous and owns a single connection; the app calls it from the event-loop
thread only, one call at a time, which is what makes each API call atomic
without any locking of our own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL,
    -- One of the kinds in the module docstring. No CHECK constraint: the
    -- stores are the only writers, and the CHECK doubled the cost of the
    -- audit inserts.
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

_INSERT_AUDIT = (
    "INSERT INTO audit (project_id, kind, operation, external_purchase_id, user_id, sku, quantity, at, item_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class OperationNumbers:
    """Hands out the audit's operation numbers within one write transaction."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        """Continue after ``last``, the highest number committed so far."""
        self.last = last

    def take(self) -> int:
        """The next operation number."""
        self.last += 1
        return self.last


class Store:
    """The SQLite connection, write transactions, audit trail and key/value table."""

    def __init__(self, path: str) -> None:
        """Open (creating if needed) the database at ``path``."""
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one API call
        # is exactly one transaction. check_same_thread=False only lets the
        # store be built on one thread and used on the loop thread; calls are
        # still serialised by the event loop.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL is durable against application crashes, which is
        # all a test fake needs, and avoids an fsync per call.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(audit)")}
        for column, decl in _AUDIT_ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE audit ADD COLUMN {column} {decl}")
        row = self.db.execute("SELECT COALESCE(MAX(operation), 0) FROM audit").fetchone()
        self._last_operation: int = row[0]

    def add_schema(self, script: str) -> None:
        """Create an API's tables (``CREATE ... IF NOT EXISTS`` statements)."""
        self.db.executescript(script)

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # ----------------------------------------------------------------- writes

    @contextmanager
    def write(self) -> Iterator[OperationNumbers]:
        """One write transaction: taken at once (IMMEDIATE), committed when
        the block ends, rolled back if anything in it raises. The operation
        numbers it hands out count as used only once it commits."""
        self.db.execute("BEGIN IMMEDIATE")
        numbers = OperationNumbers(self._last_operation)
        try:
            yield numbers
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._last_operation = numbers.last

    def add_audit(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Audit rows ``(project_id, kind, operation, external_purchase_id,
        user_id, sku, quantity, at, item_id)``, inside a ``write`` block."""
        self.db.executemany(_INSERT_AUDIT, rows)

    # ------------------------------------------------------------------ reads

    def audit(self, project_id: int | None = None, after_id: int = 0, limit: int = 10000) -> list[dict[str, Any]]:
        """Audit rows (one per item applied) with id > after_id, oldest first."""
        if project_id is None:
            rows = self.db.execute("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        else:
            rows = self.db.execute(
                "SELECT * FROM audit WHERE project_id = ? AND id > ? ORDER BY id LIMIT ?",
                (project_id, after_id, limit),
            )
        cols = [d[0] for d in rows.description]
        out = []
        for r in rows:
            entry = dict(zip(cols, r, strict=True))
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
        return self.audit_counts_by(kind, "external_purchase_id", project_id)["calls"]

    def audit_counts_by(
        self, kind: str, column: str = "external_purchase_id", project_id: int | None = None
    ) -> dict[str, dict[str, int]]:
        """Per value of ``column`` (one of AUDIT_COUNT_COLUMNS) among rows of
        ``kind``: ``{"calls": {value: distinct applying calls}, "rows": {value:
        rows}}``. Rows where the column is null are left out."""
        if column not in AUDIT_COUNT_COLUMNS:
            raise ValueError(f"column must be one of {', '.join(AUDIT_COUNT_COLUMNS)}")
        sql = f"SELECT {column}, COUNT(DISTINCT operation), COUNT(*) FROM audit WHERE kind = ? AND {column} IS NOT NULL"
        params: list[Any] = [kind]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        sql += f" GROUP BY {column}"
        calls: dict[str, int] = {}
        rows: dict[str, int] = {}
        for value, n_calls, n_rows in self.db.execute(sql, params):
            calls[value] = n_calls
            rows[value] = n_rows
        return {"calls": calls, "rows": rows}

    # ------------------------------------------------------------- key/value

    def get_json(self, key: str) -> Any:
        """The JSON value stored under ``key``, or None."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``; None deletes it."""
        if value is None:
            self.db.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            self.db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )


def where(filters: Iterable[tuple[str, Any]], extra: Iterable[str] = ()) -> tuple[str, list[Any]]:
    """``" WHERE a = ? AND b = ?"`` (empty if nothing applies) and its
    parameters, for the ``(column, value)`` pairs whose value is not None,
    plus ``extra`` conditions as given."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in filters:
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    clauses += extra
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
