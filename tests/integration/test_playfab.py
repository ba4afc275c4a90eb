"""PlayFab end to end: real worker, the sandbox's PlayFab API over HTTP."""

from __future__ import annotations

import pytest

from devstack.localstack import wait_until
from producers.publisher import Publisher
from schemas.commands import RevokeCommand
from tests.conftest import FAST, settings_for
from tests.helpers import command, playfab_stack, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import connect

pytestmark = pytest.mark.integration

PF = 9001  # the PlayFab project; every other project stays on Xsolla
PLAYERS = ["PF-ANA", "PF-BO", "PF-CHEN"]


@pytest.fixture(scope="module")
def pf(tmp_path_factory):
    with playfab_stack(tmp_path_factory.mktemp("playfab"), PF, PLAYERS, FAST) as stack:
        stack.sandbox_put("/sandbox/playfab/config", {"shuffle_results": True})
        yield stack


@pytest.fixture
def results(pf):
    return Results(connect(pf.redis.url), Keys())


def counts(stack, kind="playfab.grant"):
    return stack.sandbox_get("/sandbox/playfab/counts", kind=kind, by="annotation")


def inventory(stack, player):
    return stack.sandbox_get("/sandbox/playfab/inventory", player=player)


def purchase(epid, user, items):
    return command(PF, epid, user=user, sku=items[0][0], quantity=items[0][1])


def test_shuffled_results_are_matched_by_identity(pf, results):
    ids = [f"pf-m{i}" for i in range(12)]
    cmds = [
        command(PF, epid, user=PLAYERS[i % 3], sku=["sword", "shield", "gem"][i % 3], quantity=1 + i % 3)
        for i, epid in enumerate(ids)
    ]
    Publisher(settings_for(pf)).publish_many(cmds)
    records = wait_final(results, PF, ids)
    assert {r["status"] for r in records.values()} == {"granted"}
    for c in cmds:
        got = records[c.external_purchase_id]["response"]["ItemGrantResults"]
        assert {(g["PlayFabId"], g["ItemId"], g["Annotation"]) for g in got} == {
            (c.user_id, c.operation.items[0].sku, c.external_purchase_id)
        }
        assert len(got) == c.operation.items[0].quantity
    assert counts(pf)["counts"] == {epid: 1 for epid in ids}


def test_a_read_timeout_is_reconciled_from_the_inventory_not_doubted_or_doubled(pf, results):
    pf.sandbox_put("/sandbox/faults", {"script": [{"action": "hang", "seconds": 3}]})
    try:
        Publisher(settings_for(pf)).publish(command(PF, "pf-hang", user="PF-BO", sku="gem", quantity=2))
        record = wait_final(results, PF, ["pf-hang"], timeout=40)["pf-hang"]
    finally:
        pf.sandbox_put("/sandbox/faults", {})
    assert record["status"] == "granted"
    assert record["response"].get("reconciled") is True
    assert counts(pf)["counts"]["pf-hang"] == 1  # applied once: not resent
    annotated = [i for i in inventory(pf, "PF-BO")["Inventory"] if i.get("Annotation") == "pf-hang"]
    assert len(annotated) == 2
    # What the read-back found is what a refund takes back.
    Publisher(settings_for(pf)).publish(RevokeCommand(project_id=PF, external_purchase_id="pf-hang", comment="Refund"))
    wait_until(
        lambda: results.get(PF, "pf-hang").get("revoke", {}).get("status") not in (None, "pending", "sending"),
        20,
        "the revoke's outcome",
        interval=0.1,
    )
    assert results.get(PF, "pf-hang")["revoke"]["status"] == "revoked", results.get(PF, "pf-hang")["revoke"]
    assert [i for i in inventory(pf, "PF-BO")["Inventory"] if i.get("Annotation") == "pf-hang"] == []


def test_unknown_account_rejects_that_users_grants_only(pf, results):
    cmds = [
        command(PF, "pf-ok1", user="PF-ANA", sku="gem"),
        command(PF, "pf-ghost", user="PF-NOBODY", sku="gem"),
        command(PF, "pf-ok2", user="PF-CHEN", sku="gem"),
    ]
    Publisher(settings_for(pf)).publish_many(cmds)
    records = wait_final(results, PF, ["pf-ok1", "pf-ghost", "pf-ok2"])
    assert records["pf-ghost"]["status"] == "rejected" and "AccountNotFound" in records["pf-ghost"]["error"]
    assert records["pf-ok1"]["status"] == records["pf-ok2"]["status"] == "granted"


def test_result_false_fails_that_command_only(pf, results):
    pf.sandbox_put("/sandbox/playfab/catalog", {"CatalogVersion": "main", "Catalog": ["gem", "sword", "shield"]})
    try:
        Publisher(settings_for(pf)).publish_many(
            [
                command(PF, "pf-cat-ok", user="PF-ANA", sku="sword"),
                command(PF, "pf-cat-no", user="PF-ANA", sku="not.in.catalog"),
            ]
        )
        records = wait_final(results, PF, ["pf-cat-ok", "pf-cat-no"])
    finally:
        pf.sandbox_put("/sandbox/playfab/catalog", None)
    assert records["pf-cat-ok"]["status"] == "granted"
    assert records["pf-cat-no"]["status"] == "rejected" and "Result: false" in records["pf-cat-no"]["error"]


def test_revoke_takes_back_the_instances_the_grant_created(pf, results):
    publisher = Publisher(settings_for(pf))
    publisher.publish(command(PF, "pf-refund", user="PF-CHEN", sku="shield", quantity=3))
    wait_final(results, PF, ["pf-refund"])
    publisher.publish(RevokeCommand(project_id=PF, external_purchase_id="pf-refund", comment="Refund"))
    wait_until(
        lambda: (
            results.get(PF, "pf-refund").get("revoke", {}).get("status")
            in ("revoked", "rejected", "failed", "in_doubt")
        ),
        20,
        "the revoke's outcome",
        interval=0.1,
    )
    record = results.get(PF, "pf-refund")
    assert record["revoke"]["status"] == "revoked", record["revoke"]
    assert [i for i in inventory(pf, "PF-CHEN")["Inventory"] if i.get("Annotation") == "pf-refund"] == []


def test_delete_of_an_item_instance_by_operation_id(pf, results):
    from schemas.commands import PlayFabDeleteCommand

    publisher = Publisher(settings_for(pf))
    publisher.publish(command(PF, "pf-del-src", user="PF-ANA", sku="gem", quantity=1))
    granted = wait_final(results, PF, ["pf-del-src"])["pf-del-src"]
    instance = granted["response"]["ItemGrantResults"][0]["ItemInstanceId"]
    delete = PlayFabDeleteCommand(project_id=PF, operation_id="del-1", playfab_id="PF-ANA", item_instance_id=instance)
    missing = PlayFabDeleteCommand(project_id=PF, operation_id="del-2", playfab_id="PF-ANA", item_instance_id="nope")
    publisher.publish_many([delete, delete, missing])

    def deletes() -> list:
        return [results.get(PF, op, "playfab.delete") for op in ("del-1", "del-2")]

    wait_until(
        lambda: all(r and r["status"] not in ("pending", "sending") for r in deletes()),
        20,
        "the deletes' outcomes",
        interval=0.1,
    )
    recs = deletes()
    assert [r["status"] for r in recs] == ["revoked", "rejected"]
    assert recs[0]["duplicates"] == 1 and "ItemNotFound" in recs[1]["error"]
    assert instance not in {i["ItemInstanceId"] for i in inventory(pf, "PF-ANA")["Inventory"]}


def test_product_disabled_is_final_for_the_call_and_rate_limits_are_retried(pf, results):
    publisher = Publisher(settings_for(pf))
    pf.sandbox_put("/sandbox/playfab/config", {"shuffle_results": True, "title_state": "product_disabled"})
    try:
        publisher.publish(command(PF, "pf-off", user="PF-ANA", sku="gem"))
        record = wait_final(results, PF, ["pf-off"])["pf-off"]
    finally:
        pf.sandbox_put("/sandbox/playfab/config", {"shuffle_results": True})
    assert record["status"] == "rejected" and "ProductDisabledForTitle (1609)" in record["error"]
    assert record["attempts"] == 1  # not retried

    pf.sandbox_put("/sandbox/faults", {"script": [{"status": 429, "retry_after": 1}]})
    try:
        publisher.publish(command(PF, "pf-throttled", user="PF-BO", sku="gem"))
        record = wait_final(results, PF, ["pf-throttled"], timeout=20)["pf-throttled"]
    finally:
        pf.sandbox_put("/sandbox/faults", {})
    assert record["status"] == "granted" and record["attempts"] == 2
    assert counts(pf)["counts"]["pf-throttled"] == 1


def test_playfab_fields_travel_in_custom_parameters(pf, results):
    extras = {"playfab": {"Data": {"source": "store", "campaign": "winter"}, "CustomTags": {"trace": "t-1"}}}
    bad = {"playfab": {"Data": {"!hidden": "x"}}}
    Publisher(settings_for(pf)).publish_many(
        [
            command(PF, "pf-data", user="PF-ANA", sku="gem", custom_parameters=extras),
            command(PF, "pf-bad-data", user="PF-ANA", sku="gem", custom_parameters=bad),
            command(PF, "pf-half", user="PF-ANA", sku="gem", quantity=1.5),
        ]
    )
    records = wait_final(results, PF, ["pf-data", "pf-bad-data", "pf-half"])
    assert records["pf-data"]["status"] == "granted"
    instance = records["pf-data"]["response"]["ItemGrantResults"][0]
    assert instance.get("CustomData") == {"source": "store", "campaign": "winter"}
    assert records["pf-bad-data"]["status"] == "rejected" and "'!'" in records["pf-bad-data"]["error"]
    assert records["pf-half"]["status"] == "rejected" and "whole item instances" in records["pf-half"]["error"]


@pytest.mark.parametrize("then", ["400", "503 until retries run out"])
def test_what_a_read_back_proved_applied_is_final_whatever_the_rest_meets(pf, results, then):
    """Purchases A and B for one player in one call: A applies, B gets
    Result: false, and the answer is lost. The read-back finds A; B is sent
    again and meets a 400 (split) or 503s (retries exhausted). A stays
    granted once: never sent again, never marked failed, never replayed."""
    a, b = f"pf-part-a-{then[:3]}", f"pf-part-b-{then[:3]}"
    follow_up = (
        [{"path": "GrantItemsToUsers", "status": 400}]
        if then == "400"
        else [{"path": "GrantItemsToUsers", "status": 503}] * 8
    )
    pf.sandbox_put("/sandbox/playfab/catalog", {"CatalogVersion": "main", "Catalog": ["sword"]})
    pf.sandbox_put("/sandbox/faults", {"script": [{"path": "GrantItemsToUsers", "action": "drop"}, *follow_up]})
    try:
        Publisher(settings_for(pf)).publish_many(
            [command(PF, a, user="PF-ANA", sku="sword"), command(PF, b, user="PF-ANA", sku="not.in.catalog")]
        )
        records = wait_final(results, PF, [a, b], timeout=60)
    finally:
        pf.sandbox_put("/sandbox/faults", {})
        pf.sandbox_put("/sandbox/playfab/catalog", None)
    assert records[a]["status"] == "granted" and records[a]["response"]["reconciled"] is True
    assert records[b]["status"] == ("rejected" if then == "400" else "failed")
    assert counts(pf)["rows"][a] == 1
    assert len([i for i in inventory(pf, "PF-ANA")["Inventory"] if i.get("Annotation") == a]) == 1
    if then != "400":
        # Replaying what failed touches B only (and B is refused: not in the catalog).
        import subprocess
        import sys

        from devstack.localstack import REPO_ROOT

        pf.sandbox_put("/sandbox/playfab/catalog", {"CatalogVersion": "main", "Catalog": ["sword"]})
        try:
            out = subprocess.run(
                [sys.executable, "-m", "ops", "replay", "--status", "failed", "--project-id", str(PF)],
                env=pf.env(),
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0 and "replayed 1 of 1 selected" in out.stdout, out.stdout + out.stderr
            wait_until(
                lambda: results.get(PF, b)["status"] in ("rejected", "granted"),
                20,
                "the replayed purchase's outcome",
                interval=0.1,
            )
        finally:
            pf.sandbox_put("/sandbox/playfab/catalog", None)
        assert results.get(PF, b)["status"] == "rejected"
        assert counts(pf)["rows"][a] == 1


def test_an_echoed_secret_key_is_stored_nowhere(pf, results):
    from tests.helpers import redis_text

    pf.sandbox_put("/sandbox/faults", {"script": [{"path": "GrantItemsToUsers", "status": 400, "echo_headers": True}]})
    try:
        Publisher(settings_for(pf)).publish(command(PF, "pf-echo", user="PF-ANA", sku="gem"))
        record = wait_final(results, PF, ["pf-echo"])["pf-echo"]
    finally:
        pf.sandbox_put("/sandbox/faults", {})
    assert "x-secretkey" in record["error"].lower()
    logs = "".join(w.log_text() for w in pf.workers)
    for text in (record["error"], logs, redis_text(results.redis, "grants:*")):
        assert pf.playfab_key not in text
