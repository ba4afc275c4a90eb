"""Settling in_doubt on the real stack: a PlayFab purchase whose answer was
lost (and whose read-back failed too) is shown by `grants inventory`,
resolved by `grants resolve` (CLI and Celery task), then revoked or
replayed, through real workers and the sandbox's PlayFab API."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from devstack.localstack import wait_until
from producers.publisher import Publisher
from schemas.commands import RevokeCommand
from tests.conftest import FAST, settings_for
from tests.helpers import command, grants, playfab_stack, wait_final
from worker import resolve as rs
from worker.backends.registry import Backends
from worker.celery_app import create_app
from worker.keys import Keys
from worker.ledger import Ledger
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration

PF = 9101  # the PlayFab project; every other project stays on Xsolla
PLAYERS = ["PF-RES-A", "PF-RES-B", "PF-RES-C", "PF-RES-D", "PF-RES-E"]


@pytest.fixture(scope="module")
def pf(tmp_path_factory):
    # Two attempts: a lost answer, then a failed read-back, and it is in_doubt.
    with playfab_stack(
        tmp_path_factory.mktemp("resolve"), PF, PLAYERS, {**FAST, "GRANTS_RETRY_MAX_ATTEMPTS": "2"}
    ) as stack:
        yield stack


@pytest.fixture
def results(pf):
    return Results(connect(pf.redis.url), Keys())


def annotated(stack, player, purchase):
    inventory = stack.sandbox_get("/sandbox/playfab/inventory", player=player)["Inventory"]
    return [i for i in inventory if i.get("Annotation") == purchase]


def make_in_doubt(stack, results, epid, user, *, applied, quantity=1):
    """A PlayFab grant in_doubt: its answer lost (after applying it, or a 500
    before), and the inventory read-back that follows failing too."""
    first = {"action": "drop", "path": "GrantItemsToUsers"} if applied else {"status": 500, "path": "GrantItemsToUsers"}
    stack.sandbox_put("/sandbox/faults", {"script": [first] + [{"status": 500, "path": "GetUserInventory"}] * 3})
    try:
        Publisher(settings_for(stack)).publish(command(PF, epid, user=user, sku="gem", quantity=quantity))
        record = wait_final(results, PF, [epid], timeout=40)[epid]
    finally:
        stack.sandbox_put("/sandbox/faults", {})
    assert record["status"] == "in_doubt", record
    assert len(annotated(stack, user, epid)) == (quantity if applied else 0)
    return record


def test_inventory_shows_it_seen_and_resolve_granted_makes_it_revocable(pf, results):
    user = PLAYERS[0]
    make_in_doubt(pf, results, "res-g1", user, applied=True, quantity=2)
    make_in_doubt(pf, results, "res-g2", user, applied=False)

    report = json.loads(grants(pf, "inventory", "--project-id", str(PF), "--user", user, "--json").stdout)
    (source,) = report["sources"]
    assert source["backend"] == "playfab" and source["read"] == "Admin/GetUserInventory"
    assert sum(i.get("Annotation") == "res-g1" for i in source["items"]) == 2
    seen = {d["id"]: d["seen"] for d in report["in_doubt"]}
    assert seen["res-g1"].startswith("seen: 2 instance(s) annotated res-g1")
    assert seen["res-g2"].startswith("not seen")
    text = grants(pf, "inventory", "--project-id", str(PF), "--user", user).stdout
    assert "IN INVENTORY" in text and "seen: 2 instance(s)" in text and "grants resolve ID" in text

    out = grants(
        pf, "resolve", "res-g1", "--project-id", str(PF), "--as", "granted", "--actor", "ops-ana", "--note", "2 gems"
    )
    assert "resolved 1 of 1 as granted (by ops-ana)" in out.stdout
    record = results.get(PF, "res-g1")
    assert record["status"] == "granted"
    (h,) = record["history"]
    assert (h["event"], h["by"], h["note"], h["from_status"]) == ("resolve", "ops-ana", "2 gems", "in_doubt")
    assert record["response"]["resolved"] is True and len(record["response"]["ItemGrantResults"]) == 2
    # No longer in doubt: the inventory view says so.
    report = json.loads(grants(pf, "inventory", "--project-id", str(PF), "--user", user, "--json").stdout)
    assert [d["id"] for d in report["in_doubt"]] == ["res-g2"]

    # A refund now takes back exactly the instances the inventory showed.
    Publisher(settings_for(pf)).publish(RevokeCommand(project_id=PF, external_purchase_id="res-g1", comment="Refund"))
    wait_until(
        lambda: (results.get(PF, "res-g1").get("revoke") or {}).get("status") not in (None, "pending", "sending"),
        20,
        "the revoke's outcome",
        interval=0.1,
    )
    assert results.get(PF, "res-g1")["revoke"]["status"] == "revoked"
    assert annotated(pf, user, "res-g1") == []


def test_resolve_failed_then_replay_grants_it_once(pf, results):
    user = PLAYERS[1]
    make_in_doubt(pf, results, "res-f1", user, applied=False)
    dry = grants(pf, "resolve", "res-f1", "--project-id", str(PF), "--as", "failed", "--actor", "bo", "--dry-run")
    assert f"would resolve {PF}/res-f1" in dry.stdout and results.get(PF, "res-f1")["status"] == "in_doubt"
    out = grants(pf, "resolve", "res-f1", "--project-id", str(PF), "--as", "failed", "--actor", "bo")
    assert "resolved 1 of 1 as failed" in out.stdout and "grants replay --status failed" in out.stderr
    assert results.get(PF, "res-f1")["status"] == "failed"
    grants(pf, "replay", "--status", "failed", "--project-id", str(PF), "--actor", "bo")
    record = wait_final(results, PF, ["res-f1"])["res-f1"]
    assert record["status"] == "granted"
    assert [h["event"] for h in record["history"]] == ["resolve", "replay"]
    assert len(annotated(pf, user, "res-f1")) == 1  # granted once
    counts = pf.sandbox_get("/sandbox/playfab/counts", kind="playfab.grant", by="annotation")["counts"]
    assert counts["res-f1"] == 1


def test_resolve_is_refused_from_any_status_but_in_doubt(pf, results, tmp_path):
    user = PLAYERS[2]
    publisher = Publisher(settings_for(pf))
    publisher.publish(command(PF, "res-ok", user=user, sku="gem"))
    assert wait_final(results, PF, ["res-ok"])["res-ok"]["status"] == "granted"
    refused = grants(pf, "resolve", "res-ok", "--project-id", str(PF), "--as", "failed", "--actor", "x", expect=1)
    assert f"{PF}/res-ok: it is granted, not in_doubt: nothing changed" in refused.stderr
    assert "resolved 0 of 1" in refused.stdout
    assert results.get(PF, "res-ok")["status"] == "granted" and results.get(PF, "res-ok")["history"] == []
    missing = grants(pf, "resolve", "nope", "--project-id", str(PF), "--as", "granted", "--actor", "x", expect=1)
    assert "no such record" in missing.stderr
    # Named in a file, with one in_doubt among them: that one is resolved.
    make_in_doubt(pf, results, "res-file", user, applied=True)
    ids = tmp_path / "ids.txt"
    ids.write_text("res-file\n# a comment\nres-ok\n")
    out = grants(
        pf, "resolve", "--file", str(ids), "--project-id", str(PF), "--as", "granted", "--actor", "x", expect=1
    )
    assert "resolved 1 of 2 as granted" in out.stdout
    assert results.get(PF, "res-file")["status"] == "granted"
    # A PlayFab purchase the inventory does not show cannot be resolved granted.
    make_in_doubt(pf, results, "res-absent", user, applied=False)
    absent = grants(pf, "resolve", "res-absent", "--project-id", str(PF), "--as", "granted", "--actor", "x", expect=1)
    assert "shows no item instance annotated 'res-absent'" in absent.stderr
    assert results.get(PF, "res-absent")["status"] == "in_doubt"
    nothing = grants(pf, "resolve", "--as", "failed", "--actor", "x", expect=2)
    assert "name the commands" in nothing.stderr


def test_resolve_racing_a_replay_resolves_once(pf, results):
    user = PLAYERS[3]
    make_in_doubt(pf, results, "res-race", user, applied=True)
    settings = Settings(redis_url=pf.redis.url)
    client = connect(pf.redis.url)
    ledger = Ledger.from_settings(client, settings)
    backends = Backends(settings)
    resolver = rs.Resolver(ledger, Results(client, Keys()), backends)
    codes: list[str] = []
    barrier = threading.Barrier(4)

    def resolving(n: int) -> None:
        barrier.wait()
        summary = rs.resolve(resolver, [(PF, "res-race")], finding="granted", kind="grant", actor=f"r{n}")
        codes.extend(summary.verdicts.elements())

    def replaying(n: int) -> None:
        barrier.wait()
        codes.extend(ledger.replay([(PF, "res-race")], actor=f"p{n}", allow_in_doubt=True))

    threads = [threading.Thread(target=resolving, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=replaying, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backends.close()
    # One of the four changed it; the others found it changed.
    assert sum(c in ("resolved", "replayed") for c in codes) == 1, codes
    record = wait_final(results, PF, ["res-race"])["res-race"]
    assert record["status"] == "granted" and len(record["history"]) == 1
    if record["history"][0]["event"] == "resolve":
        assert len(annotated(pf, user, "res-race")) == 1  # closed as it was: nothing sent again
    else:  # the replay won: sent again, as a forced replay of in_doubt is
        assert len(annotated(pf, user, "res-race")) == 2


def test_resolve_as_a_celery_task(pf, results):
    user = PLAYERS[4]
    make_in_doubt(pf, results, "res-task", user, applied=True)
    app = create_app(settings_for(pf))
    app.send_task(
        "grants.resolve",
        kwargs={
            "as_status": "granted",
            "actor": "flower-ops",
            "purchase_ids": ["res-task"],
            "project_id": PF,
            "note": "seen in Game Manager",
        },
        queue="grants.ops",
    )
    wait_until(lambda: results.get(PF, "res-task")["status"] == "granted", 20, "the task's resolution", interval=0.1)
    (h,) = results.get(PF, "res-task")["history"]
    assert h["by"] == "flower-ops" and h["note"] == "seen in Game Manager"
    metrics = connect(pf.redis.url).hgetall(Keys().operator_actions)
    assert int(metrics[f"resolve|grant|{PF}|granted"]) >= 1


def test_resolve_through_flowers_task_api(pf, results):
    user = PLAYERS[4]
    make_in_doubt(pf, results, "res-flower", user, applied=False)
    if pf.flower is None:
        pf.start_flower()
    body = {"kwargs": {"as_status": "failed", "actor": "flower-bo", "purchase_ids": ["res-flower"], "project_id": PF}}
    answer = httpx.post(
        f"http://127.0.0.1:{pf.flower_port}/api/task/async-apply/grants.resolve",
        json=body,
        auth=pf.flower_auth,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    wait_until(lambda: results.get(PF, "res-flower")["status"] == "failed", 20, "the resolution", interval=0.1)
    (h,) = results.get(PF, "res-flower")["history"]
    assert h["by"] == "flower-bo" and h["as"] == "failed"


def test_failed_is_refused_where_playfab_shows_the_grant_applied(pf, results):
    """resolve --as failed then replay would grant twice: refused where the
    inventory read shows the purchase's instances."""
    user = PLAYERS[3]
    make_in_doubt(pf, results, "res-twice", user, applied=True)
    out = grants(pf, "resolve", "res-twice", "--project-id", str(PF), "--as", "failed", "--actor", "bo", expect=1)
    assert "it applied" in out.stdout + out.stderr and "resolve --as granted" in out.stdout + out.stderr
    assert results.get(PF, "res-twice")["status"] == "in_doubt"
    grants(pf, "replay", "--status", "failed", "--project-id", str(PF))
    assert len(annotated(pf, user, "res-twice")) == 1  # never sent again
