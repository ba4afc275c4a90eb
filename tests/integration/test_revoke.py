"""Refunds against the real stack: a revoke takes back exactly what its
purchase granted, once, whatever the race with the grant."""

from __future__ import annotations

import time

import pytest

from devstack.localstack import wait_until
from schemas.commands import RevokeCommand
from tests.helpers import command, wait_final

pytestmark = pytest.mark.integration


def wait_revokes(results, project_id, ids, timeout=30.0):
    final = {"revoked", "noop", "rejected", "failed", "in_doubt"}

    def all_revoked():
        recs = {i: results.get(project_id, i) for i in ids}
        missing = [i for i, r in recs.items() if not (r and r.get("revoke") and r["revoke"]["status"] in final)]
        assert not missing, f"revokes without an outcome: {missing[:5]}"  # named on a timeout
        return recs

    return wait_until(all_revoked, timeout, "revoke outcomes", interval=0.1)


def test_revoke_racing_its_grant_never_leaves_a_grant_standing(stack, publisher, results, project_id):
    stack.sandbox_put("/sandbox/faults", {"latency_ms": 30})
    try:
        ids = [f"rr-{i}" for i in range(300)]
        for i in ids:  # each revoke published right after its grant, separately
            publisher.publish(command(project_id, i, user=f"u{hash(i) % 7}", quantity=3))
            publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id=i, comment="Refund"))
        recs = wait_revokes(results, project_id, ids)
    finally:
        stack.sandbox_put("/sandbox/faults", {})
    applied = stack.audit_counts(project_id)
    outcomes = {(r["status"], r["revoke"]["status"]) for r in recs.values()}
    # Only two endings: never granted (cancelled, nothing to revoke) or granted then revoked.
    assert outcomes <= {("cancelled", "noop"), ("granted", "revoked")}, outcomes
    for i, r in recs.items():
        assert applied.get(i, 0) == (1 if r["status"] == "granted" else 0)
    # Every balance is back to zero: nothing granted is left standing.
    balances = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    assert all(b["quantity"] == 0 for b in balances), balances


def test_revoke_of_granted_purchase_is_sent_once_and_shown_with_the_grant(stack, publisher, results, project_id):
    publisher.publish(command(project_id, "rv-1", quantity=2))
    wait_final(results, project_id, ["rv-1"])
    for _ in range(3):  # the pipeline sends the refund three times
        publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="rv-1", comment="Refund"))
    rec = wait_revokes(results, project_id, ["rv-1"])["rv-1"]
    assert rec["status"] == "granted" and rec["revoke"]["status"] == "revoked"
    assert rec["revoke"]["duplicates"] == 2
    balances = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    assert [b["quantity"] for b in balances] == [0]
    # A refunded purchase is never granted again, however it is re-sent.
    publisher.publish(command(project_id, "rv-1", quantity=2))
    time.sleep(1)
    assert stack.audit_counts(project_id) == {"rv-1": 1}


def test_revoke_before_the_grant_and_of_unknown_purchases(stack, publisher, results, project_id):
    publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="early-1"))
    recs = wait_revokes(results, project_id, ["early-1"])
    assert recs["early-1"]["status"] == "cancelled" and recs["early-1"]["revoke"]["status"] == "noop"
    publisher.publish(command(project_id, "early-1"))  # the grant arrives late
    time.sleep(1)
    assert stack.audit_counts(project_id) == {}
    assert results.get(project_id, "early-1")["status"] == "cancelled"


def test_revoke_the_inventory_cannot_cover_is_rejected_alone(stack, publisher, results, project_id):
    import httpx

    publisher.publish_many(
        [
            command(project_id, "rc-used", user="u-used", sku="potion", quantity=2),
            command(project_id, "rc-kept", user="u-kept", sku="potion", quantity=2),
        ]
    )
    wait_final(results, project_id, ["rc-used", "rc-kept"])
    # The first player used one potion up: take it out of the inventory, as the game would.
    httpx.post(
        f"{stack.sandbox_url}/v2/project/{project_id}/inventory/revoke",
        json=[{"user": {"id": "u-used"}, "items": [{"sku": "potion", "quantity": 1}]}],
        auth=(stack.merchant_id, stack.api_key),
    ).raise_for_status()
    publisher.publish_many(
        [RevokeCommand(project_id=project_id, external_purchase_id=i) for i in ("rc-used", "rc-kept")]
    )
    recs = wait_revokes(results, project_id, ["rc-used", "rc-kept"])
    assert recs["rc-used"]["revoke"]["status"] == "rejected"
    assert "Failed to remove this number of items" in recs["rc-used"]["revoke"]["error"]
    assert recs["rc-kept"]["revoke"]["status"] == "revoked"


def test_a_failed_refund_is_replayed_once_and_takes_the_items_back(
    stack, publisher, results, project_id, sandbox_faults
):
    import subprocess
    import sys

    from devstack.localstack import REPO_ROOT

    def grants(*argv):
        out = subprocess.run(
            [sys.executable, "-m", "ops", *argv],
            env=stack.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    publisher.publish(command(project_id, "rf-1", quantity=2))
    wait_final(results, project_id, ["rf-1"])
    sandbox_faults(script=[{"status": 503}] * 6)  # more than the stack's 6 attempts allow
    publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="rf-1", comment="Refund"))
    rec = wait_revokes(results, project_id, ["rf-1"])["rf-1"]
    assert rec["revoke"]["status"] == "failed"
    balance = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    assert [b["quantity"] for b in balance] == [2]  # the player still has the items

    out = grants("replay", "--kind", "revoke", "--status", "failed", "--project-id", str(project_id), "--actor", "ops")
    assert "replayed 1 of 1 selected" in out
    wait_until(
        lambda: results.get(project_id, "rf-1")["revoke"]["status"] == "revoked",
        20,
        "the replayed revoke",
        interval=0.1,
    )
    rec = results.get(project_id, "rf-1")
    assert rec["revoke"]["status"] == "revoked"
    assert [h["by"] for h in rec["revoke"]["history"]] == ["ops"]
    assert [b["quantity"] for b in stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]] == [0]
    # Guarded like grants: a revoked refund is never replayed again.
    assert "replayed 0 of 0 selected" in grants(
        "replay", "--kind", "revoke", "--status", "failed", "--project-id", str(project_id)
    )


def test_expiry_of_a_record_is_not_never_seen_refunds_within_the_window_and_rejected_past_it(tmp_path, project_id):
    """Records live 2 s, the refund window 6 s, claims 120 s: a refund after
    the record expired still takes the items back; past the window it is
    rejected with a reason; a repeat after expiry is still a duplicate."""
    from producers.publisher import Publisher
    from tests.conftest import make_stack, settings_for
    from worker.keys import Keys
    from worker.results import Results
    from worker.settings import connect

    day = 86_400
    stack = make_stack(
        tmp_path,
        env={
            "GRANTS_RESULT_RETENTION_DAYS": str(2 / day),
            "GRANTS_REFUND_WINDOW_DAYS": str(6 / day),
            "GRANTS_DEDUPE_RETENTION_DAYS": str(120 / day),
        },
    )
    try:
        publisher = Publisher(settings_for(stack))
        results = Results(connect(stack.redis.url), Keys())

        def balance(user):
            rows = stack.sandbox_get("/sandbox/balances", project_id=project_id, user_id=user)["balances"]
            return sum(r["quantity"] for r in rows)

        def revoke_outcome(epid, timeout=20):
            def final_revoke():
                revoke = (results.get(project_id, epid) or {}).get("revoke") or {}
                return revoke if revoke.get("status") in ("revoked", "noop", "rejected", "failed", "in_doubt") else None

            return wait_until(final_revoke, timeout, f"a revoke outcome for {epid}", interval=0.1)

        publisher.publish_many(
            [
                command(project_id, "ex-a", user="ua", quantity=2),
                command(project_id, "ex-b", user="ub", quantity=2),
                command(project_id, "ex-c", user="uc", quantity=2),
            ]
        )
        wait_final(results, project_id, ["ex-a", "ex-b", "ex-c"])
        time.sleep(3)  # the records are gone, the refund data and the claims are not
        expired = results.get(project_id, "ex-a")
        assert expired["status"] is None and expired["claim"]["status"] == "granted"  # the claim remains

        publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="ex-a", comment="Refund"))
        assert revoke_outcome("ex-a")["status"] == "revoked"
        assert balance("ua") == 0

        # A repeat after the record expired is still the same purchase: not granted again.
        publisher.publish(command(project_id, "ex-c", user="uc", quantity=2))
        publisher.publish(command(project_id, "ex-c", user="uc", quantity=99))  # and a conflict
        time.sleep(1.5)
        assert stack.audit_counts(project_id)["ex-c"] == 1 and balance("uc") == 2
        assert results.get(project_id, "ex-c")["conflicts"]["count"] == 1

        time.sleep(4)  # past the refund window
        publisher.publish(RevokeCommand(project_id=project_id, external_purchase_id="ex-b", comment="Chargeback"))
        revoke = revoke_outcome("ex-b")
        assert revoke["status"] == "rejected" and "refund window" in revoke["error"], revoke
        assert balance("ub") == 2  # nothing was sent
        revokes_sent = stack.sandbox_get("/sandbox/stats")["calls_by_api"]
        assert revokes_sent  # (the sandbox answered the one refund of ex-a)
    finally:
        stack.stop()
