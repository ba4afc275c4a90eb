"""``grants backpack items``: what a user's Xsolla Backpack holds."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ops.args import table
from worker import errors
from worker.backends.registry import Backends
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backpack",
        help="look into users' Xsolla Backpacks",
        description="Read a user's Xsolla Backpack (GRANTS_BACKPACK_* configure the API).",
    )
    bsub = p.add_subparsers(dest="backpack_command", required=True, metavar="ACTION")
    items = bsub.add_parser("items", help="list a user's Backpack items")
    items.add_argument("--project-id", type=int, required=True)
    items.add_argument("--user", required=True, help="the user's id")
    items.add_argument("--json", action="store_true", help="print the API's JSON")
    items.set_defaults(run=run_items)


def run_items(args: argparse.Namespace, settings: Settings) -> int:
    backend = Backends(settings).backpack
    try:
        found = backend.list_items(args.project_id, args.user)
    except errors.BackendError as exc:
        print(f"grants backpack items: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    rows = []
    for item in found:
        detail = item_detail(item)
        rows.append(
            (
                item.get("item_id", ""),
                item.get("item_type", ""),
                item.get("item_sku", ""),
                item.get("external_game_id", ""),
                detail,
            )
        )
    for line in table(("ITEM_ID", "TYPE", "SKU", "GAME", "DETAIL"), rows):
        print(line)
    print(f"({len(found)} items)", file=sys.stderr)
    return 0


def item_detail(item: dict[str, Any]) -> str:
    """What identifies a Backpack item to its user: a key's or promo's code,
    a currency package's quantity (and whether it is external)."""
    return (
        item.get("code")
        or item.get("promo_code")
        or (
            f"{item.get('quantity')} (is_external_vc={item.get('is_external_vc')})"
            if item.get("item_type") == "virtual_currency"
            else ""
        )
    )
