"""Xsolla Backpack end to end: create (each item type), list, delete, through
real workers and the sandbox's Backpack API; and the CLI for each kind."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from producers.localstack import REPO_ROOT
from schemas.commands import BackpackCreateCommand, BackpackDeleteCommand
from tests.helpers import wait_final

pytestmark = pytest.mark.integration

GAME = {"image_url": "https://cdn.example/i.png", "external_game_id": "game-42"}
ITEMS = {
    "game_keys": [{"item_sku": "key.deluxe", "item_name": "Deluxe key", "code": "AAAA-BBBB-CCCC", "platform": "steam", **GAME}],
    "virtual_items": [{"item_sku": "sword.gold", "item_name": "Golden sword", **GAME}],
    "virtual_currency": [{"item_sku": "gems.500", "item_name": "500 gems", "price": 4.99, "currency": "USD",
                          "quantity": 500, **GAME}],
    "promo_codes": [{"item_sku": "promo.winter", "item_name": "Winter promo", "promo_code": "WINTER-26", **GAME}],
}


def grants(stack, *argv, expect=0, stdin=None):
    out = subprocess.run([sys.executable, "-m", "producers.cli", *argv], env=stack.env(), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, input=stdin)
    assert out.returncode == expect, out.stdout + out.stderr
    return out


def wait_kind(results, project_id, op, kind, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = results.get(project_id, op, kind)
        if rec and rec["status"] not in ("pending", "sending"):
            return rec
        time.sleep(0.1)
    raise AssertionError(f"{kind} {op}: no outcome")


def test_backpack_create_list_delete_round_trip(stack, publisher, results, project_id):
    ops = []
    for n, (item_type, items) in enumerate(ITEMS.items()):
        op = f"bp-create-{n}"
        ops.append(op)
        cmd = BackpackCreateCommand(project_id=project_id, operation_id=op, user_id="user-bp", item_type=item_type,
                                    items=items)
        publisher.publish_many([cmd, cmd])  # a repeat of the same operation is created once
    created = {op: wait_kind(results, project_id, op, "backpack.create") for op in ops}
    assert {r["status"] for r in created.values()} == {"granted"}
    vc = created["bp-create-2"]["response"]["items"][0]
    assert vc["is_external_vc"] in (True, False) and vc["quantity"] == 500
    listed = json.loads(grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "user-bp",
                               "--json").stdout)
    assert sorted(i["item_type"] for i in listed) == ["game_key", "promo_code", "virtual_currency", "virtual_item"]
    counts = stack.sandbox_get("/sandbox/backpack/counts", kind="backpack.create", by="operation_id",
                               project_id=project_id)["counts"]
    assert counts == {op: 1 for op in ops}

    key = next(i for i in listed if i["item_type"] == "game_key")
    line = json.dumps({"operation_id": "bp-del-1", "user_id": "user-bp", "item_id": key["item_id"]})
    grants(stack, "publish", "--project-id", str(project_id), "--kind", "backpack-delete", "-", stdin=line + "\n" + line)
    deleted = wait_kind(results, project_id, "bp-del-1", "backpack.delete")
    assert deleted["status"] == "revoked" and deleted["duplicates"] == 1
    after = json.loads(grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "user-bp",
                              "--json").stdout)
    assert key["item_id"] not in {i["item_id"] for i in after} and len(after) == 3

    # Deleting an item that is not there is refused (404), not retried.
    publisher.publish(BackpackDeleteCommand(project_id=project_id, operation_id="bp-del-2", user_id="user-bp",
                                            item_id="00000000-0000-4000-8000-000000000000"))
    assert wait_kind(results, project_id, "bp-del-2", "backpack.delete")["status"] == "rejected"


def test_publish_kinds_validate_their_lines(stack, project_id):
    bad = json.dumps({"operation_id": "x", "user_id": "u", "item_type": "promo_codes", "items": [{"item_sku": "p"}]})
    out = grants(stack, "publish", "--project-id", str(project_id), "--kind", "backpack-create", "-",
                 stdin=bad + "\n", expect=1)
    assert "line 1: items" in out.stderr or "line 1: (operation)" in out.stderr, out.stderr
    out = grants(stack, "publish", "--project-id", str(project_id), "--kind", "revoke", "-",
                 stdin=json.dumps({"external_purchase_id": "r-1", "comment": "Refund"}) + "\n")
    assert "published 1 commands" in out.stdout
