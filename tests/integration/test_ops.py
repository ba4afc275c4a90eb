"""Ops tools against the real stack: dead letters for poison messages, and
replay of failed / in_doubt grants (CLI and Celery task)."""

from __future__ import annotations

import json
import time

import pytest
from kombu import Connection, Exchange, Producer

from devstack.localstack import wait_until
from tests.conftest import settings_for
from tests.helpers import command, grants, operation, wait_final
from worker.celery_app import create_app

pytestmark = pytest.mark.integration


def dead_letters(stack):
    return json.loads(grants(stack, "results", "list", "--status", "dead", "--limit", "10000", "--json").stdout)


def test_poison_messages_become_dead_letters_and_the_worker_goes_on(stack, results, project_id):
    app = create_app(settings_for(stack))
    good = command(project_id, "pm-good").to_message(1)
    bad = {**command(project_id, "pm-bad").to_message(1), "operation": {**operation("pm-bad"), "items": []}}
    app.send_task("grants.ingest", args=[json.dumps([good, bad])], queue="grants.ingest")
    app.send_task("grants.ingest", args=["{this is not json"], queue="grants.ingest")
    app.send_task("grants.ingest", args=["[]", "extra"], queue="grants.ingest")
    app.send_task("grants.nope", args=[1], queue="grants.ingest")
    with Connection(stack.redis.url) as conn:  # a body that is not JSON at all
        Producer(conn).publish(
            b"\x00\xffgarbage",
            exchange=Exchange("grants.ingest", type="direct"),
            routing_key="grants.ingest",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "grants.ingest", "id": "hand-made-1"},
        )
    assert wait_final(results, project_id, ["pm-good"])["pm-good"]["status"] == "granted"

    def every_reason_seen() -> bool:
        reasons = [d["reason"] for d in dead_letters(stack)]
        kinds = ("items", "not JSON", "one argument", "unknown task", "undecodable")
        return sum(any(k in r for r in reasons) for k in kinds) == 5

    wait_until(every_reason_seen, 15, "a dead letter of each kind", interval=0.2)
    letters = dead_letters(stack)
    by_epid = [d for d in letters if d["external_purchase_id"] == "pm-bad"]
    assert by_epid and "items" in by_epid[0]["reason"] and "pm-bad" in by_epid[0]["raw"]
    all_reasons = " | ".join(d["reason"] for d in letters)
    for expected in ("the chunk is not JSON", "takes one argument", "unknown task", "undecodable message"):
        assert expected in all_reasons
    assert results.get(project_id, "pm-bad") is None
    # The worker is alive and still granting.
    command_ok = command(project_id, "pm-after")
    from producers.publisher import Publisher

    Publisher(settings_for(stack)).publish(command_ok)
    assert wait_final(results, project_id, ["pm-after"])["pm-after"]["status"] == "granted"
    assert all(w.alive() for w in stack.workers)


def test_replay_of_failed_grants_via_cli_records_history(stack, publisher, results, project_id, sandbox_faults):
    # Six 503s for each of (at most) two batches: more than the test stack's
    # GRANTS_RETRY_MAX_ATTEMPTS allows; what is left of them is cleared.
    sandbox_faults(script=[{"status": 503}] * 12)
    publisher.publish_many([command(project_id, "rp-1"), command(project_id, "rp-2", user="u2")])
    records = wait_final(results, project_id, ["rp-1", "rp-2"], timeout=60)
    assert {r["status"] for r in records.values()} == {"failed"}
    assert stack.audit_counts(project_id) == {}
    sandbox_faults()

    dry = grants(stack, "replay", "--status", "failed", "--project-id", str(project_id), "--user", "u2", "--dry-run")
    assert f"would replay {project_id}/rp-2" in dry.stdout and "rp-1" not in dry.stdout
    assert results.get(project_id, "rp-2")["status"] == "failed"  # a dry run changes nothing

    out = grants(stack, "replay", "--status", "failed", "--project-id", str(project_id), "--actor", "ops-anna")
    assert "replayed 2 of 2 selected (as ops-anna)" in out.stdout
    records = wait_final(results, project_id, ["rp-1", "rp-2"])
    assert {r["status"] for r in records.values()} == {"granted"}
    assert stack.audit_counts(project_id) == {"rp-1": 1, "rp-2": 1}
    history = json.loads(grants(stack, "results", "get", "rp-1", "--project-id", str(project_id)).stdout)["history"]
    assert [(h["event"], h["by"], h["from_status"]) for h in history] == [("replay", "ops-anna", "failed")]
    # A granted purchase is never replayed.
    again = grants(stack, "replay", "--status", "failed", "--project-id", str(project_id))
    assert "replayed 0 of 0 selected" in again.stdout


def test_replay_of_in_doubt_needs_force_and_says_why(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(script=[{"action": "hang", "seconds": 3}])
    publisher.publish(command(project_id, "rd-1"))
    assert wait_final(results, project_id, ["rd-1"], timeout=20)["rd-1"]["status"] == "in_doubt"
    refused = grants(stack, "replay", "--status", "in_doubt", "--project-id", str(project_id), expect=2)
    assert "may already be in the player's inventory" in refused.stderr
    assert results.get(project_id, "rd-1")["status"] == "in_doubt"
    time.sleep(3)  # the hung call has been applied by now (it was: that is the doubt)
    forced = grants(stack, "replay", "--status", "in_doubt", "--project-id", str(project_id), "--force")
    assert "replayed 1 of 1" in forced.stdout
    assert wait_final(results, project_id, ["rd-1"])["rd-1"]["status"] == "granted"
    # The documented risk, made visible: the forced replay applied it a second time.
    assert stack.audit_counts(project_id) == {"rd-1": 2}


def test_replay_as_a_celery_task(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(script=[{"status": 503}] * 6)
    publisher.publish(command(project_id, "rt-1"))
    assert wait_final(results, project_id, ["rt-1"], timeout=60)["rt-1"]["status"] == "failed"
    app = create_app(settings_for(stack))
    app.send_task("grants.replay", kwargs={"status": "failed", "project_id": project_id, "actor": "flower-ops"})
    wait_until(lambda: results.get(project_id, "rt-1")["status"] == "granted", 20, "the replay's grant", interval=0.1)
    record = results.get(project_id, "rt-1")
    assert record["status"] == "granted"
    assert record["history"][0]["by"] == "flower-ops"


def test_one_unencodable_command_does_not_sink_its_chunk(stack, results, project_id):
    app = create_app(settings_for(stack))
    ok1, ok2, ok3 = (command(project_id, f"ue-ok{i}").to_message(1) for i in range(3))
    huge = command(project_id, "ue-huge").to_message(1)
    huge["operation"]["custom_parameters"] = {"n": 10**30}  # beyond 64 bits
    # A list chunk (kombu's JSON keeps the huge integer) ...
    app.send_task("grants.ingest", args=[[ok1, huge]], queue="grants.ingest")
    # ... and a string chunk with a lone surrogate that orjson refuses to decode.
    text = json.dumps([ok2, ok3])[:-1] + ', {"v": 1, "kind": "grant", "project_id": 1, "operation": "\\ud800"}]'
    app.send_task("grants.ingest", args=[text], queue="grants.ingest")
    records = wait_final(results, project_id, ["ue-ok0", "ue-ok1", "ue-ok2"])
    assert {r["status"] for r in records.values()} == {"granted"}

    def the_two_letters() -> list:
        return [
            d for d in dead_letters(stack) if d["external_purchase_id"] == "ue-huge" or "\\ud800" in (d["raw"] or "")
        ]

    wait_until(lambda: len(the_two_letters()) >= 2, 10, "the two dead letters", interval=0.2)
    letters = the_two_letters()
    assert any("custom_parameters" in d["reason"] or "cannot be encoded" in d["reason"] for d in letters)
    assert len(letters) >= 2
