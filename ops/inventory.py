"""``grants inventory``: a player's inventory next to their in_doubt commands.

What the project's backend can read is read: PlayFab's GetUserInventory (each
instance our grants make carries its purchase id as ``Annotation``, so a
purchase is *seen* or not), the user's Xsolla Backpack items (nothing in them
names our operation: the match is the operator's). Xsolla's inventory API
has no server-side read (worker/backends/xsolla.py says why): the in_doubt
purchases are listed alone, for the operator to check in Publisher Account.
Then ``grants resolve`` records the finding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from redis.exceptions import RedisError

from ops.args import table
from schemas.commands import GrantCommand
from schemas.kinds import BACKPACK_DELETE, GRANT, KINDS, PLAYFAB_DELETE
from schemas.records import Status
from worker import errors
from worker.backends.playfab import PlayFab, item_grants, playfab_extras
from worker.backends.registry import Backends, backend_name
from worker.backends.xsolla import NO_INVENTORY_READ
from worker.keys import Keys
from worker.replay import record_skus, record_user
from worker.results import Results
from worker.settings import Settings
from worker.work import Lane

OPERATORS_MATCH = (
    "the backend's items carry nothing of the purchase: the match is the operator's "
    "(compare SKUs, quantities and times)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inventory",
        help="a player's inventory in the project's backend, next to their in_doubt commands",
        description=(
            "Read the user's inventory where the project's backend can be read (PlayFab: GetUserInventory; "
            "Xsolla Backpack: the user's items) and list the user's in_doubt commands beside it. PlayFab "
            "instances carry their purchase id, so each in_doubt purchase is marked seen or not; elsewhere "
            "the match is yours. Xsolla's inventory API has no server-side read. Then record what you found "
            "with `grants resolve`."
        ),
    )
    p.add_argument("--project-id", type=int, required=True)
    p.add_argument("--user", required=True, help="the user's id (PlayFab: the PlayFabId)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run)


def in_doubt_of(results: Results, project_id: int, user: str) -> list[dict[str, Any]]:
    """The user's in_doubt commands of every kind in the project, oldest first."""
    found = []
    for kind in KINDS:
        for record in results.iter(Status.in_doubt, kind=kind, project_id=project_id):
            if record_user(record) == user:
                found.append({**record, "kind": kind})
    return sorted(found, key=lambda r: r.get("completed_at") or "")


def _record_id(record: dict[str, Any]) -> str:
    return record.get(KINDS[record["kind"]].identity) or ""


def _what(record: dict[str, Any]) -> str:
    """A record's items (SKU x quantity) or its operation, short."""
    command = record.get("command") or record.get("request") or {}
    items = (command.get("operation") or {}).get("items") or command.get("items") or []
    if items:
        return ", ".join(f"{i.get('sku') or i.get('item_sku')} x{i.get('quantity', 1)}" for i in items)
    if record["kind"] == PLAYFAB_DELETE:
        return f"instance {command.get('item_instance_id')}"
    if record["kind"] == BACKPACK_DELETE:
        return f"item {command.get('item_id')}"
    return ", ".join(sorted(record_skus(record))) or "-"


def playfab_seen(record: dict[str, Any], inventory: list[dict[str, Any]]) -> str:
    """Whether a PlayFab inventory shows an in_doubt command's effect."""
    kind, rid = record["kind"], _record_id(record)
    if kind == GRANT:
        command = GrantCommand.model_validate({**record["command"], "project_id": record["project_id"]})
        expected = Counter(g["ItemId"] for g in item_grants(command))
        have = Counter(i.get("ItemId") for i in inventory if i.get("Annotation") == rid)
        if playfab_extras(command).get("CharacterId"):
            return "a character's grant: not in the player's inventory read; the match is the operator's"
        if not have:
            return f"not seen: no instance annotated {rid}"
        if have == expected:
            return f"seen: {sum(have.values())} instance(s) annotated {rid}, as granted"
        return f"partly seen: {dict(have)} annotated {rid}, the purchase grants {dict(expected)}"
    if kind == PLAYFAB_DELETE:
        instance = (record.get("command") or {}).get("item_instance_id")
        there = any(i.get("ItemInstanceId") == instance for i in inventory)
        return f"instance {instance} still there: not applied" if there else f"instance {instance} gone"
    return OPERATORS_MATCH


def inventory_report(
    settings: Settings, results: Results, backends: Backends, project_id: int, user: str
) -> dict[str, Any]:
    """The user's inventory as each backend involved reads it, and their
    in_doubt commands, each marked where the backend shows it."""
    doubts = in_doubt_of(results, project_id, user)
    report: dict[str, Any] = {"project_id": project_id, "user": user, "sources": [], "in_doubt": []}
    inventory_backend = backend_name(settings, GRANT, project_id)
    pf_items: list[dict[str, Any]] | None = None
    if inventory_backend == "playfab":
        source: dict[str, Any] = {"backend": "playfab", "read": "Admin/GetUserInventory"}
        backend = backends.for_lane(Lane(GRANT, project_id))
        assert isinstance(backend, PlayFab)
        try:
            got = backend.get_user_inventory(user)
            pf_items = [i.model_dump(exclude_none=True) for i in got.Inventory]
            source.update(items=pf_items, virtual_currency=got.VirtualCurrency)
        except errors.BackendError as exc:
            source["error"] = str(exc)
        report["sources"].append(source)
    else:
        report["sources"].append({"backend": "xsolla", "read": None, "note": NO_INVENTORY_READ})
    wants_backpack = any(KINDS[r["kind"]].family == "backpack" for r in doubts)
    # Backpack belongs to Xsolla projects: read when one is configured, or
    # whenever the user has Backpack operations in doubt.
    if wants_backpack or (inventory_backend == "xsolla" and settings.backpack_token.get_secret_value()):
        source = {"backend": "backpack", "read": "GET .../users/{user}/items"}
        try:
            source["items"] = backends.backpack.list_items(project_id, user)
        except errors.BackendError as exc:
            source["error"] = str(exc)
        report["sources"].append(source)
    for r in doubts:
        family = KINDS[r["kind"]].family
        on = "backpack" if family == "backpack" else inventory_backend if family == "inventory" else family
        if on == "playfab" and pf_items is not None and r["kind"] in (GRANT, PLAYFAB_DELETE):
            seen = playfab_seen(r, pf_items)
        elif on == "xsolla":
            seen = "no server-side read: the match is the operator's (Publisher Account)"
        elif on == "playfab" and pf_items is None:
            seen = "the inventory could not be read"
        else:
            seen = OPERATORS_MATCH
        report["in_doubt"].append(
            {
                "kind": r["kind"],
                "id": _record_id(r),
                "backend": on,
                "what": _what(r),
                "in_doubt_since": r.get("completed_at"),
                "error": r.get("error"),
                "seen": seen,
            }
        )
    return report


def _items_table(backend: str, items: list[dict[str, Any]]) -> list[str]:
    if backend == "playfab":
        rows = [
            [
                i.get("ItemInstanceId", ""),
                i.get("ItemId", ""),
                i.get("Annotation", ""),
                i.get("PurchaseDate", ""),
            ]
            for i in items
        ]
        return table(["ITEM_INSTANCE_ID", "ITEM_ID", "ANNOTATION", "PURCHASE_DATE"], rows)
    rows = [
        [
            str(i.get("item_id", "")),
            str(i.get("item_type", "")),
            str(i.get("item_sku", "")),
            str(i.get("quantity", "")) if i.get("item_type") == "virtual_currency" else "",
        ]
        for i in items
    ]
    return table(["ITEM_ID", "TYPE", "SKU", "QUANTITY"], rows)


def render(report: dict[str, Any]) -> list[str]:
    """The report as text."""
    out = [f"project {report['project_id']}, user {report['user']}"]
    for source in report["sources"]:
        out.append("")
        if source.get("read") is None:
            out.append(f"{source['backend']}: not read. {source['note']}")
            continue
        if "error" in source:
            out.append(f"{source['backend']} ({source['read']}): could not be read: {source['error']}")
            continue
        items = source["items"]
        extra = ""
        if source.get("virtual_currency"):
            extra = "; virtual currency " + ", ".join(f"{k}={v}" for k, v in sorted(source["virtual_currency"].items()))
        out.append(f"{source['backend']} ({source['read']}): {len(items)} item(s){extra}")
        if items:
            out += ["  " + line for line in _items_table(source["backend"], items)]
    out.append("")
    doubts = report["in_doubt"]
    if not doubts:
        out.append(f"no in_doubt command for {report['user']} in project {report['project_id']}")
        return out
    out.append(f"in_doubt for {report['user']}: {len(doubts)}")
    rows = [[d["kind"], d["id"], d["backend"], d["what"], d["in_doubt_since"] or "", d["seen"]] for d in doubts]
    out += ["  " + line for line in table(["KIND", "ID", "BACKEND", "WHAT", "IN_DOUBT_SINCE", "IN INVENTORY"], rows)]
    out.append("")
    out.append(
        "record what you found: grants resolve ID --project-id "
        f"{report['project_id']} --as granted|failed --actor NAME [--note TEXT] [--kind KIND]"
    )
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = settings.redis_client(patient=False)
    results = Results(client, Keys(settings.key_prefix))
    backends = Backends(settings)
    try:
        report = inventory_report(settings, results, backends, args.project_id, args.user)
    except RedisError as exc:
        print(f"grants inventory: the results store failed: {exc}", file=sys.stderr)
        return 2
    finally:
        backends.close()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(render(report)))
    unread = [s for s in report["sources"] if "error" in s]
    for s in unread:
        print(f"grants inventory: {s['backend']} could not be read: {s['error']}", file=sys.stderr)
    return 2 if unread else 0


__all__ = ["in_doubt_of", "inventory_report", "playfab_seen", "render"]
