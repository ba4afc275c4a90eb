"""`grants inventory` for a project on Xsolla: no server-side inventory read
(said plainly), the user's Backpack items beside their in_doubt commands, the
match left to the operator; then `grants resolve` settles a Backpack create.
The PlayFab side (purchases seen by their Annotation) is in test_resolve.py."""

from __future__ import annotations

import json

import pytest

from schemas.commands import BackpackCreateCommand, RevokeCommand
from tests.helpers import command, final_record, grants, wait_final

pytestmark = pytest.mark.integration

GAME = {"image_url": "https://cdn.example/i.png", "external_game_id": "game-42"}


def create(project_id, op, user, sku):
    return BackpackCreateCommand(
        project_id=project_id,
        operation_id=op,
        user_id=user,
        item_type="virtual_items",
        items=[{"item_sku": sku, "item_name": sku, **GAME}],
    )


def test_xsolla_has_no_read_and_backpack_is_shown_beside_the_doubts(
    stack, publisher, results, project_id, sandbox_faults
):
    user = "inv-user"
    # An Xsolla grant and a Backpack create whose answers were lost after applying.
    sandbox_faults(
        script=[
            {"action": "drop", "path": f"/project/{project_id}/inventory/purchase"},
            {"action": "drop", "path": "/virtual_items"},
        ]
    )
    publisher.publish(command(project_id, "inv-x1", user=user, sku="gem.pack.500"))
    assert wait_final(results, project_id, ["inv-x1"], timeout=20)["inv-x1"]["status"] == "in_doubt"
    publisher.publish(create(project_id, "inv-bp1", user, "sword.gold"))
    assert final_record(results, project_id, "inv-bp1", "backpack.create")["status"] == "in_doubt"
    sandbox_faults()
    publisher.publish(create(project_id, "inv-bp2", user, "shield.iron"))
    assert final_record(results, project_id, "inv-bp2", "backpack.create")["status"] == "granted"
    publisher.publish(command(project_id, "inv-other", user="someone-else"))  # not this user's
    wait_final(results, project_id, ["inv-other"])

    report = json.loads(grants(stack, "inventory", "--project-id", str(project_id), "--user", user, "--json").stdout)
    xsolla, backpack = report["sources"]
    assert xsolla["backend"] == "xsolla" and xsolla["read"] is None
    assert "no server-side read" in xsolla["note"] and "Login JWT" in xsolla["note"]
    assert backpack["backend"] == "backpack"
    assert sorted(i["item_sku"] for i in backpack["items"]) == ["shield.iron", "sword.gold"]
    doubts = {d["id"]: d for d in report["in_doubt"]}
    assert set(doubts) == {"inv-x1", "inv-bp1"}
    assert doubts["inv-x1"]["what"] == "gem.pack.500 x1" and "operator's" in doubts["inv-x1"]["seen"]
    assert doubts["inv-bp1"]["kind"] == "backpack.create" and "the match is the operator's" in doubts["inv-bp1"]["seen"]

    text = grants(stack, "inventory", "--project-id", str(project_id), "--user", user).stdout
    assert "xsolla: not read." in text and "backpack (" in text and "sword.gold" in text
    assert "inv-bp1" in text and "inv-x1" in text and "inv-other" not in text

    # The operator saw the sword: the create is settled as granted.
    out = grants(
        stack,
        "resolve",
        "inv-bp1",
        "--kind",
        "backpack.create",
        "--project-id",
        str(project_id),
        "--as",
        "granted",
        "--actor",
        "ops-chen",
    )
    assert "resolved 1 of 1 as granted" in out.stdout
    record = results.get(project_id, "inv-bp1", "backpack.create")
    assert record["status"] == "granted" and record["history"][0]["by"] == "ops-chen"
    # And the Xsolla purchase, checked in Publisher Account, as granted: revocable with its items.
    grants(stack, "resolve", "inv-x1", "--project-id", str(project_id), "--as", "granted", "--actor", "ops-chen")
    report = json.loads(grants(stack, "inventory", "--project-id", str(project_id), "--user", user, "--json").stdout)
    assert report["in_doubt"] == []
    publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="inv-x1", comment="Refund"))
    assert final_record(results, project_id, "inv-x1", "revoke")["status"] == "revoked"
