"""What the fake Xsolla inventory remembers: balances, catalogs, applied purchases.

Its tables live in the shared ``sandbox.store.Store`` file; every item it
grants or removes is a row of the shared audit (kinds ``purchase``,
``reward``, ``revoke``, ``item_id`` null).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandbox.store import OperationNumbers, Store, where

_SCHEMA = """
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

# SQLite's default cap on bound variables is 32766; 400 ids per SELECT stays
# far below it and still covers a 50-operation call in one query.
_IDS_PER_SELECT = 400

_SELECT_BALANCE = "SELECT quantity FROM balances WHERE project_id = ? AND user_id = ? AND sku = ?"
_UPSERT_BALANCE = (
    "INSERT INTO balances (project_id, user_id, sku, quantity) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (project_id, user_id, sku) DO UPDATE SET quantity = excluded.quantity"
)


class _UserRef(Protocol):
    id: str


class _ItemRef(Protocol):
    sku: str
    quantity: int | float


class Operation(Protocol):
    """What the store needs from an operation (a validated pydantic model)."""

    @property
    def user(self) -> _UserRef:
        """Whose inventory the operation changes."""
        ...

    @property
    def items(self) -> Sequence[_ItemRef]:
        """The SKUs and quantities it adds or removes."""
        ...


class NotEnough(Exception):
    """A revoke would take a balance below zero; nothing of the call was applied."""

    def __init__(self, index: int, user_id: str, sku: str, have: Any, want: Any) -> None:
        """Operation ``index`` wants ``want`` of ``sku`` from a user who has ``have``."""
        super().__init__(f"operation {index}: user {user_id!r} has {have} of {sku!r}, cannot revoke {want}")
        self.index = index
        self.user_id = user_id
        self.sku = sku
        self.have = have
        self.want = want


@dataclass(slots=True)
class _Plan:
    """What one call writes, worked out before writing it."""

    results: list[dict[str, Any]] = field(default_factory=list)
    audit_rows: list[tuple[Any, ...]] = field(default_factory=list)
    touched: set[tuple[str, str]] = field(default_factory=set)
    new_applied: list[tuple[int, str]] = field(default_factory=list)


class XsollaStore:
    """Inventories (balances per project, user and SKU), catalogs and the
    purchases applied, in the shared store's file."""

    def __init__(self, store: Store) -> None:
        """Add the Xsolla tables to ``store``."""
        store.add_schema(_SCHEMA)
        self._store = store
        self._db = store.db
        # Catalog lookups happen on every call; cache them per project.
        self._catalogs: dict[int, frozenset[str] | None] = {}

    # ----------------------------------------------------------------- writes

    def apply_purchases(self, project_id: int, ops: Sequence[Any], idempotent: bool) -> list[dict[str, Any]]:
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
        with self._store.write() as numbers:
            balances = self._load_balances(project_id, {(op.user.id, item.sku) for op in ops for item in op.items})
            seen = None
            if kind == "purchase" and idempotent:
                seen = self._applied_ids(project_id, {op.purchase.external_purchase_id for op in ops})
            plan = _plan(project_id, kind, ops, sign, balances, seen, numbers)
            self._db.executemany(
                _UPSERT_BALANCE,
                [(project_id, u, s, balances[(u, s)]) for (u, s) in plan.touched],
            )
            self._store.add_audit(plan.audit_rows)
            if plan.new_applied:
                self._db.executemany(
                    "INSERT INTO applied_purchases (project_id, external_purchase_id) VALUES (?, ?)",
                    plan.new_applied,
                )
        return plan.results

    def _load_balances(self, project_id: int, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
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
        for start in range(0, len(epid_list), _IDS_PER_SELECT):
            chunk = epid_list[start : start + _IDS_PER_SELECT]
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
        with self._store.write():
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
        has = self._db.execute("SELECT 1 FROM catalog_projects WHERE project_id = ?", (project_id,)).fetchone()
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

    def balances(self, project_id: int | None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Current balances, optionally for one project and/or one user."""
        clause, params = where((("project_id", project_id), ("user_id", user_id)))
        sql = f"SELECT project_id, user_id, sku, quantity FROM balances{clause} ORDER BY project_id, user_id, sku"
        return [
            {"project_id": p, "user_id": u, "sku": s, "quantity": q} for p, u, s, q in self._db.execute(sql, params)
        ]


def _plan(
    project_id: int,
    kind: str,
    ops: Sequence[Any],
    sign: int,
    balances: dict[tuple[str, str], Any],
    seen: set[str] | None,
    numbers: OperationNumbers,
) -> _Plan:
    """Walk the operations in order, updating ``balances`` in place, and
    return what to write and answer.

    ``seen`` (idempotent purchases only) holds the purchase ids applied
    before and grows with those the call applies: an operation whose id is
    in it is answered with the current balances but not applied. Raises
    NotEnough when a revoke would take a balance below zero.
    """
    is_purchase = kind == "purchase"
    now = time.time()
    plan = _Plan()
    operation = 0
    for index, op in enumerate(ops):
        user_id = op.user.id
        epid = op.purchase.external_purchase_id if is_purchase else None
        apply = True
        if seen is not None and epid is not None:  # idempotent purchases
            if epid in seen:
                apply = False
            else:
                seen.add(epid)
                plan.new_applied.append((project_id, epid))
        if apply:
            operation = numbers.take()
        items_out = []
        for item in op.items:
            key = (user_id, item.sku)
            balance = balances.get(key, 0)
            if apply:
                balance = balance + sign * item.quantity
                if balance < 0:
                    raise NotEnough(index, user_id, item.sku, balances.get(key, 0), item.quantity)
                balances[key] = balance
                plan.touched.add(key)
                plan.audit_rows.append((project_id, kind, operation, epid, user_id, item.sku, item.quantity, now, None))
            items_out.append({"sku": item.sku, "quantity": item.quantity, "balance": balance})
        result: dict[str, Any] = {"user": {"id": user_id}}
        if is_purchase:
            result["purchase"] = {"external_purchase_id": epid}
        result["items"] = items_out
        plan.results.append(result)
    return plan
