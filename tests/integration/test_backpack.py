"""Xsolla Backpack end to end: create (each item type), list, delete, through
real workers and the sandbox's Backpack API; and the CLI for each kind."""

from __future__ import annotations

import json

import pytest

from devstack.localstack import wait_until
from schemas.commands import BackpackCreateCommand, BackpackDeleteCommand
from schemas.records import Status
from tests.helpers import final_record, grants

pytestmark = pytest.mark.integration

GAME = {"image_url": "https://cdn.example/i.png", "external_game_id": "game-42"}
ITEMS = {
    "game_keys": [
        {"item_sku": "key.deluxe", "item_name": "Deluxe key", "code": "AAAA-BBBB-CCCC", "platform": "steam", **GAME}
    ],
    "virtual_items": [{"item_sku": "sword.gold", "item_name": "Golden sword", **GAME}],
    "virtual_currency": [
        {"item_sku": "gems.500", "item_name": "500 gems", "price": 4.99, "currency": "USD", "quantity": 500, **GAME}
    ],
    "promo_codes": [{"item_sku": "promo.winter", "item_name": "Winter promo", "promo_code": "WINTER-26", **GAME}],
}


def test_backpack_create_list_delete_round_trip(stack, publisher, results, project_id):
    ops = []
    for n, (item_type, items) in enumerate(ITEMS.items()):
        op = f"bp-create-{n}"
        ops.append(op)
        cmd = BackpackCreateCommand(
            project_id=project_id, operation_id=op, user_id="user-bp", item_type=item_type, items=items
        )
        publisher.publish_many([cmd, cmd])  # a repeat of the same operation is created once
    created = {op: final_record(results, project_id, op, "backpack.create") for op in ops}
    assert {r["status"] for r in created.values()} == {"granted"}
    vc = created["bp-create-2"]["response"]["items"][0]
    assert vc["is_external_vc"] in (True, False) and vc["quantity"] == 500
    listed = json.loads(
        grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "user-bp", "--json").stdout
    )
    assert sorted(i["item_type"] for i in listed) == ["game_key", "promo_code", "virtual_currency", "virtual_item"]
    counts = stack.sandbox_get(
        "/sandbox/backpack/counts", kind="backpack.create", by="operation_id", project_id=project_id
    )["counts"]
    assert counts == {op: 1 for op in ops}

    key = next(i for i in listed if i["item_type"] == "game_key")
    line = json.dumps({"operation_id": "bp-del-1", "user_id": "user-bp", "item_id": key["item_id"]})
    grants(
        stack, "publish", "--project-id", str(project_id), "--kind", "backpack-delete", "-", stdin=line + "\n" + line
    )
    deleted = final_record(results, project_id, "bp-del-1", "backpack.delete")
    assert deleted["status"] == "revoked" and deleted["duplicates"] == 1
    after = json.loads(
        grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "user-bp", "--json").stdout
    )
    assert key["item_id"] not in {i["item_id"] for i in after} and len(after) == 3

    # Deleting an item that is not there is refused (404), not retried.
    publisher.publish(
        BackpackDeleteCommand(
            project_id=project_id,
            operation_id="bp-del-2",
            user_id="user-bp",
            item_id="00000000-0000-4000-8000-000000000000",
        )
    )
    assert final_record(results, project_id, "bp-del-2", "backpack.delete")["status"] == "rejected"


def test_publish_kinds_validate_their_lines(stack, project_id):
    bad = json.dumps({"operation_id": "x", "user_id": "u", "item_type": "promo_codes", "items": [{"item_sku": "p"}]})
    out = grants(
        stack, "publish", "--project-id", str(project_id), "--kind", "backpack-create", "-", stdin=bad + "\n", expect=1
    )
    assert "line 1: items" in out.stderr or "line 1: (operation)" in out.stderr, out.stderr
    out = grants(
        stack,
        "publish",
        "--project-id",
        str(project_id),
        "--kind",
        "revoke",
        "-",
        stdin=json.dumps({"external_purchase_id": "r-1", "comment": "Refund"}) + "\n",
    )
    assert "published 1 commands" in out.stdout


PATH_ATTACKS = [
    "../../2222/user/bob",
    "alice#frag",
    "carol/../dave",
    ".",
    "..",
    "a\\b",
    "a?b=1",
    "a%2Fb",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "",
]


def test_ids_that_would_change_the_url_path_are_refused_everywhere(stack, results, project_id):
    """Refused by the producer, refused again at ingestion (a hand-made
    message), refused by `grants backpack items`: never routed elsewhere.
    Anything else in an id is percent-encoded into one path segment."""
    from tests.helpers import publish_raw
    from worker.settings import connect

    def create(op, user):
        return {"operation_id": op, "user_id": user, "item_type": "virtual_items", "items": ITEMS["virtual_items"]}

    lines = [json.dumps(create(f"pa-{i}", bad)) for i, bad in enumerate(PATH_ATTACKS)]
    lines.append(json.dumps(create("pa-ok", "ana maría+1")))
    out = grants(
        stack,
        "publish",
        "--project-id",
        str(project_id),
        "--kind",
        "backpack-create",
        "-",
        stdin="\n".join(lines) + "\n",
        expect=1,
    )
    for n in range(1, len(PATH_ATTACKS) + 1):
        assert f"line {n}: user_id" in out.stderr, out.stderr
    assert "published 1 commands" in out.stdout

    # The same ids in a hand-made message (no producer validation): dead letters.
    publish_raw(
        connect(stack.redis.url),
        [
            {"v": 1, "kind": "backpack.create", "project_id": project_id, **create(f"raw-{i}", bad)}
            for i, bad in enumerate(PATH_ATTACKS)
        ]
        + [
            {
                "v": 1,
                "kind": "backpack.delete",
                "project_id": project_id,
                "operation_id": "raw-del",
                "user_id": "ok-user",
                "item_id": "../../x",
            }
        ],
    )
    assert final_record(results, project_id, "pa-ok", "backpack.create")["status"] == "granted"

    def dead_letters() -> list:
        return [d for d in results.in_status(Status.dead, limit=1000) if "raw-" in (d["raw"] or "")]

    wait_until(lambda: len(dead_letters()) == len(PATH_ATTACKS) + 1, 15, "a dead letter per attack", interval=0.1)
    dead = dead_letters()
    assert len(dead) == len(PATH_ATTACKS) + 1
    assert all(
        "URL path" in d["reason"] or "path segment" in d["reason"] or "at least 1" in d["reason"] for d in dead
    ), [d["reason"] for d in dead]
    for i in range(len(PATH_ATTACKS)):
        assert results.get(project_id, f"raw-{i}", "backpack.create") is None

    # Only the good create reached the backend, under its own (encoded) user.
    counts = stack.sandbox_get("/sandbox/backpack/counts", kind="backpack.create", by="operation_id")["counts"]
    assert not any(op.startswith(("pa-", "raw-")) and op != "pa-ok" for op in counts)
    listed = json.loads(
        grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "ana maría+1", "--json").stdout
    )
    assert [i["item_sku"] for i in listed] == ["sword.gold"]
    for bad in ("../../2222/user/bob", "carol/../dave", "alice#frag"):
        out = grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", bad, expect=2)
        assert "URL path" in out.stderr and "Traceback" not in out.stderr


def test_a_failed_backpack_delete_is_replayed(stack, publisher, results, project_id, sandbox_faults):
    cmd = BackpackCreateCommand(
        project_id=project_id,
        operation_id="bpr-create",
        user_id="user-r",
        item_type="virtual_items",
        items=ITEMS["virtual_items"],
    )
    publisher.publish(cmd)
    item = final_record(results, project_id, "bpr-create", "backpack.create")["response"]["items"][0]
    sandbox_faults(script=[{"status": 503}] * 6)
    publisher.publish(
        BackpackDeleteCommand(project_id=project_id, operation_id="bpr-del", user_id="user-r", item_id=item["item_id"])
    )
    assert final_record(results, project_id, "bpr-del", "backpack.delete")["status"] == "failed"
    out = grants(
        stack, "replay", "--kind", "backpack-delete", "--status", "failed", "--project-id", str(project_id)
    ).stdout
    assert "replayed 1 of 1 selected" in out
    wait_until(
        lambda: results.get(project_id, "bpr-del", "backpack.delete")["status"] == "revoked",
        20,
        "the replayed delete",
        interval=0.1,
    )
    listed = json.loads(
        grants(stack, "backpack", "items", "--project-id", str(project_id), "--user", "user-r", "--json").stdout
    )
    assert listed == []
