"""The grant pipeline end to end: real redis-server, real `celery -A worker
worker` processes, real HTTP to the sandbox. Each test uses its own project id;
what it asserts is read back from the sandbox's audit and the results store."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import pytest

from devstack.localstack import REPO_ROOT, wait_until
from schemas.records import Status
from tests.helpers import command, operation, wait_final

pytestmark = pytest.mark.integration


def test_single_command_is_flushed_by_the_interval(stack, publisher, results, project_id):
    publisher.publish(command(project_id, "solo-1"))
    records = wait_final(results, project_id, ["solo-1"], timeout=10)
    record = records["solo-1"]
    assert record["status"] == "granted"
    assert record["attempts"] == 1
    assert record["response"]["items"][0]["balance"] == 1
    # Flushed by the 200 ms interval, not by a full batch, and not much later.
    assert stack.audit_counts(project_id) == {"solo-1": 1}


def test_120_commands_take_at_least_3_calls_of_at_most_50(stack, publisher, results, project_id):
    stack.sandbox_put("/sandbox/reset", {})  # per-call counters only
    ids = [f"bulk-{i}" for i in range(120)]
    publisher.publish_many(command(project_id, i, user=f"u{n % 7}") for n, i in enumerate(ids))
    records = wait_final(results, project_id, ids)
    assert {r["status"] for r in records.values()} == {"granted"}
    stats = stack.sandbox_get("/sandbox/stats")
    assert stats["calls"] >= 3
    assert stats["max_operations_per_call"] <= 50
    assert stats["ignored_operations"] == 0
    batches = {r["batch_id"] for r in records.values()}
    assert len(batches) >= 3
    assert stack.audit_counts(project_id) == {i: 1 for i in ids}


def test_duplicates_from_two_concurrent_producers_are_granted_once(stack, results, project_id, tmp_path):
    ids = [f"dup-{i}" for i in range(300)]
    feed = tmp_path / "feed.jsonl"
    # Each purchase three times inside the feed, and the feed published twice at once.
    feed.write_text("".join(json.dumps(operation(i)) + "\n" for i in ids * 3))
    env = stack.env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ops", "publish", "--project-id", str(project_id), str(feed)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "published 900 commands" in out
    records = wait_final(results, project_id, ids)
    assert {r["status"] for r in records.values()} == {"granted"}
    assert stack.audit_counts(project_id) == {i: 1 for i in ids}

    def duplicates() -> set[int]:
        return {results.get(project_id, i)["duplicates"] for i in ids}

    # 6 sightings of each purchase: one original, five duplicates on its record
    # (the second producer's chunk may be ingested after the grants finished).
    wait_until(lambda: duplicates() == {5}, 15, "five duplicates on every record", interval=0.1)
    dups = duplicates()
    assert dups == {5}


def test_conflicting_repeat_is_rejected_and_the_original_granted(stack, publisher, results, project_id):
    publisher.publish(command(project_id, "c-1", quantity=1))
    wait_final(results, project_id, ["c-1"])
    publisher.publish(command(project_id, "c-1", quantity=500))
    wait_until(lambda: "conflicts" in results.get(project_id, "c-1"), 10, "the conflict on the record")
    record = results.get(project_id, "c-1")
    assert record["status"] == "granted"
    assert record["command"]["operation"]["items"][0]["quantity"] == 1
    assert record["conflicts"]["count"] == 1
    assert "different payload" in record["conflicts"]["error"]
    listed = results.in_status(Status.conflict, project_id=project_id)
    assert [r["external_purchase_id"] for r in listed] == ["c-1"]
    balances = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    assert [b["quantity"] for b in balances] == [1]


def test_429_with_retry_after_then_success(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(script=[{"status": 429, "retry_after": 1}])
    started = time.monotonic()
    publisher.publish(command(project_id, "rl-1"))
    record = wait_final(results, project_id, ["rl-1"], timeout=20)["rl-1"]
    assert record["status"] == "granted"
    assert record["attempts"] == 2
    # Retry-After: 1 was honoured (the jittered backoff alone would be ~0.2 s).
    assert time.monotonic() - started >= 1.0
    assert stack.audit_counts(project_id) == {"rl-1": 1}


def test_503_then_success(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(script=[{"status": 503}, {"status": 503}])
    publisher.publish(command(project_id, "u-1"))
    record = wait_final(results, project_id, ["u-1"], timeout=20)["u-1"]
    assert record["status"] == "granted"
    assert record["attempts"] == 3
    assert stack.audit_counts(project_id) == {"u-1": 1}


def test_read_timeout_without_idempotency_is_in_doubt_and_not_resent(
    stack, publisher, results, project_id, sandbox_faults
):
    # The sandbox applies the grant, then answers after the worker's 1.5 s read timeout.
    sandbox_faults(script=[{"action": "hang", "seconds": 3}])
    publisher.publish(command(project_id, "t-1"))
    record = wait_final(results, project_id, ["t-1"], timeout=20)["t-1"]
    assert record["status"] == "in_doubt"
    assert "ReadTimeout" in record["error"]
    time.sleep(3)  # room for a wrongful resend to show up
    assert results.get(project_id, "t-1")["attempts"] == 1
    assert stack.audit_counts(project_id) == {"t-1": 1}


def test_batch_with_one_unknown_sku_rejects_only_that_one(stack, publisher, results, project_id):
    stack.sandbox_put(f"/sandbox/projects/{project_id}/catalog", ["gem.pack"])
    ids = [f"s-{i}" for i in range(20)]
    cmds = [command(project_id, i) for i in ids]
    cmds[7] = command(project_id, "s-7", sku="no.such.sku")
    publisher.publish_many(cmds)
    records = wait_final(results, project_id, ids)
    assert records["s-7"]["status"] == "rejected"
    assert "no.such.sku" in records["s-7"]["error"]
    assert {i for i, r in records.items() if r["status"] == "granted"} == set(ids) - {"s-7"}
    assert stack.audit_counts(project_id) == {i: 1 for i in ids if i != "s-7"}


def test_results_cli_prints_records_lists_and_stats(stack, publisher, results, project_id):
    publisher.publish(command(project_id, "cli-1"))
    wait_final(results, project_id, ["cli-1"])

    def grants(*argv):
        out = subprocess.run(
            [sys.executable, "-m", "ops", *argv],
            env=stack.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    record = grants("results", "get", "cli-1", "--project-id", str(project_id))
    assert record["status"] == "granted" and record["external_purchase_id"] == "cli-1"
    listed = grants("results", "list", "--status", "granted", "--project-id", str(project_id), "--json")
    assert [(r["project_id"], r["external_purchase_id"], r["status"]) for r in listed] == [
        (project_id, "cli-1", "granted")
    ]
    stats = grants("results", "stats", "--json")
    assert stats["counts"]["granted"] >= 1
    assert {"backlog", "oldest_waiting_age_s"} <= stats.keys()
    # Each final outcome is on the stream the purchase pipeline follows.
    client = results.redis
    entries = client.xrevrange("grants:outcomes", count=2000)
    assert any(e[1]["external_purchase_id"] == "cli-1" and e[1]["status"] == "granted" for e in entries)


def test_publish_cli_reports_invalid_lines_and_publishes_the_rest(stack, results, project_id, tmp_path):
    good = [operation("l-1"), operation("l-3")]
    lines = [
        json.dumps(good[0]),
        json.dumps(operation("l-2", sku="Bad SKU")),
        json.dumps(good[1]),
        "{not json",
        json.dumps({**operation("l-5"), "platform": "dreamcast"}),
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "ops", "publish", "--project-id", str(project_id), str(feed)],
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    errors = out.stderr.strip().splitlines()
    assert any(e.startswith("line 2: items[0].sku:") for e in errors), errors
    assert any(e.startswith("line 4: (json): invalid JSON") for e in errors), errors
    assert any(e.startswith("line 5: platform:") for e in errors), errors
    assert "published 2 commands; 3 invalid lines skipped" in out.stdout
    records = wait_final(results, project_id, ["l-1", "l-3"])
    assert {r["status"] for r in records.values()} == {"granted"}
    assert results.get(project_id, "l-2") is None


def test_publish_accepts_the_api_request_body_array(stack, results, project_id, tmp_path):
    body = [operation("a-1"), operation("a-2", user="user-2")]
    feed = tmp_path / "body.json"
    feed.write_text(json.dumps(body, indent=2))
    out = subprocess.run(
        [sys.executable, "-m", "ops", "publish", "--project-id", str(project_id), "-"],
        input=feed.read_text(),
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    records = wait_final(results, project_id, ["a-1", "a-2"])
    assert {r["status"] for r in records.values()} == {"granted"}


def test_flower_shows_the_tasks_and_no_secret(stack, publisher, results, project_id):
    import httpx

    if stack.flower is None:
        stack.start_flower()
    api = f"http://127.0.0.1:{stack.flower_port}/api/tasks"
    # Flower subscribes to events a moment after it reports its connection;
    # publish a fresh pair each second until it reports a send task (bounded).
    pairs = itertools.count()

    def tasks() -> dict:
        return httpx.get(api, params={"limit": 5000}, auth=stack.flower_auth, timeout=10).json()

    def a_send_task_seen() -> list:
        n = next(pairs)
        pair = [f"fl-{n}a", f"fl-{n}b"]
        publisher.publish_many([command(project_id, i) for i in pair])
        wait_final(results, project_id, pair)
        time.sleep(1)
        return [t for t in tasks().values() if t["name"] == "grants.send_batches" and t["state"] == "SUCCESS"]

    seen = wait_until(a_send_task_seen, 20, "Flower to show a send task", interval=0)
    assert seen, "Flower did not see a send task"
    assert stack.api_key not in json.dumps(tasks())


def test_flower_cannot_be_driven_cross_site(stack, publisher, results, project_id):
    """No Flower of ours runs with an unauthenticated API, and with its basic
    auth it refuses what a hostile web page could send: a cross-site
    text/plain POST applying grants.replay or grants.ingest (a browser would
    attach the cached credentials), and no wildcard CORS answer."""
    import httpx

    if stack.flower is None:
        stack.start_flower()
    base = f"http://127.0.0.1:{stack.flower_port}"
    body = json.dumps({"kwargs": {"status": "failed", "project_id": project_id, "force": True, "actor": "attacker"}})
    assert httpx.post(f"{base}/api/task/async-apply/grants.replay", content=body, timeout=10).status_code == 401
    for headers in (
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    ):
        answer = httpx.post(
            f"{base}/api/task/async-apply/grants.replay",
            content=body,
            headers=headers,
            auth=stack.flower_auth,
            timeout=10,
        )
        assert answer.status_code == 403, answer.text
        assert answer.headers.get("access-control-allow-origin") is None
    # The operator's own call (same origin, with the credentials) is served.
    ok = httpx.get(f"{base}/api/workers", auth=stack.flower_auth, timeout=10)
    assert ok.status_code == 200 and ok.headers.get("access-control-allow-origin") is None
    time.sleep(1)
    assert "attacker" not in (stack.workers[0].log_text())


def test_no_secret_in_logs_or_results_store(stack, publisher, results, project_id):
    """After a grant of its own: neither the logs nor any key of the results
    store (records, claims, buffers, lists, the outcome stream, indexes) holds
    the API key, raw or as the Basic credential."""
    from tests.helpers import redis_text, secret_forms

    publisher.publish(command(project_id, "nosecret-1"))
    record = wait_final(results, project_id, ["nosecret-1"])["nosecret-1"]
    assert record["status"] == "granted"

    def logs_with_the_batch() -> str:
        """All the logs, once they hold this batch's completion (else "")."""
        logs = "".join(p.read_text(errors="replace") for p in stack.workdir.glob("*.log"))
        completed = any("batch completed" in line and record["batch_id"] in line for line in logs.splitlines())
        return logs if completed else ""

    logs = wait_until(logs_with_the_batch, 10, "the batch's 'batch completed' log line")  # the workers logged it
    stored = redis_text(results.redis, "grants:*")
    assert "nosecret-1" in stored  # the scan reads this test's record
    for secret in secret_forms(stack.merchant_id, stack.api_key):
        assert secret not in logs
        assert secret not in stored


def test_secrets_echoed_by_a_backend_are_stored_and_logged_nowhere(
    stack, publisher, results, project_id, sandbox_faults
):
    """A 500 and a 400 whose bodies echo our request headers (Basic auth,
    Backpack's bearer token): the records keep the error, never a secret in
    any form (raw, base64 Basic, bearer); nor do the logs or `results get`."""
    from schemas.commands import BackpackCreateCommand
    from tests.helpers import redis_text, secret_forms

    sandbox_faults(
        script=[
            {"status": 500, "echo_headers": True},
            {"status": 400, "echo_headers": True},
            {"path": "/virtual_items", "status": 500, "echo_headers": True},
        ]
    )
    publisher.publish(command(project_id, "echo-500"))
    wait_final(results, project_id, ["echo-500"])
    publisher.publish(command(project_id, "echo-400"))
    wait_final(results, project_id, ["echo-400"])
    publisher.publish(
        BackpackCreateCommand(
            project_id=project_id,
            operation_id="echo-bp",
            user_id="u-echo",
            item_type="virtual_items",
            items=[
                {"item_sku": "s", "item_name": "S", "image_url": "https://cdn.example/s.png", "external_game_id": "g"}
            ],
        )
    )
    wait_until(
        lambda: (
            (results.get(project_id, "echo-bp", "backpack.create") or {}).get("status")
            not in (None, "pending", "sending")
        ),
        20,
        "the Backpack create's outcome",
        interval=0.1,
    )
    errors = [
        results.get(project_id, "echo-500")["error"],
        results.get(project_id, "echo-400")["error"],
        results.get(project_id, "echo-bp", "backpack.create")["error"],
    ]
    assert all("authorization" in e.lower() for e in errors), errors  # the echo itself is kept...
    forms = secret_forms(stack.merchant_id, stack.api_key, stack.backpack_token)
    shown = subprocess.run(
        [sys.executable, "-m", "ops", "results", "get", "echo-500", "--project-id", str(project_id)],
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    logs = "".join(p.read_text(errors="replace") for p in stack.workdir.glob("w*.log"))
    for text in (*errors, shown, logs, redis_text(results.redis, "grants:*")):
        for secret in forms:  # ...without any secret in it
            assert secret not in text


@pytest.mark.parametrize(
    "refusal",
    [
        {"status": 302, "location": "https://elsewhere.example/api"},
        {"status": 301},
        {"status": 307},
        {"status": 404, "body": "Not Found"},
        {"status": 405, "body": "<html>Method Not Allowed</html>"},
    ],
    ids=["302", "301", "307", "404-proxy", "405"],
)
def test_a_redirect_or_an_endpoint_wide_refusal_fails_the_lane_replayably_without_splitting(
    stack, publisher, results, project_id, sandbox_faults, refusal
):
    """The endpoint or configuration is wrong, not the commands: nothing is
    split (each purchase is not sent 4-7 times), the lane backs off, one loud
    log line says so, and after the retries every command is failed (safe to
    replay), never rejected."""
    stack.sandbox_put("/sandbox/reset", {})
    # A first call that takes 0.5 s, so that the three purchases behind it
    # accumulate into one batch; then that batch is refused on each of the
    # stack's GRANTS_RETRY_MAX_ATTEMPTS.
    sandbox_faults(script=[{"action": "hang", "seconds": 0.5}, *[refusal] * 6])
    publisher.publish(command(project_id, "ep-first"))
    time.sleep(0.05)
    ids = [f"ep-{i}" for i in range(3)]
    publisher.publish_many(command(project_id, i) for i in ids)
    records = wait_final(results, project_id, ids, timeout=40)
    assert {r["status"] for r in records.values()} == {"failed"}, records
    assert len({r["batch_id"] for r in records.values()}) == 1
    assert all("configuration is wrong" in r["error"] for r in records.values())
    assert stack.sandbox_get("/sandbox/stats")["calls"] == 1 + 6  # one call per attempt, never split
    assert stack.audit_counts(project_id) == {"ep-first": 1}
    logs = "".join(w.log_text() for w in stack.workers)
    loud = [line for line in logs.splitlines() if "lane backing off" in line and f'"project_id": {project_id}' in line]
    assert 1 <= len(loud) <= 2, loud  # once per interval per pool process, not per attempt or command
    # Fixed configuration: the replay grants them.
    out = subprocess.run(
        [sys.executable, "-m", "ops", "replay", "--status", "failed", "--project-id", str(project_id)],
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "replayed 3 of 3 selected" in out.stdout, out.stdout + out.stderr
    assert {r["status"] for r in wait_final(results, project_id, ids, timeout=30).values()} == {"granted"}


def test_413_splits_and_only_a_single_command_still_too_large_is_rejected(
    stack, publisher, results, project_id, sandbox_faults
):
    # Behind a slow first call, the four accumulate into one batch, refused whole.
    sandbox_faults(script=[{"action": "hang", "seconds": 0.5}, {"status": 413, "body": "Request Entity Too Large"}])
    publisher.publish(command(project_id, "big-first"))
    time.sleep(0.05)
    ids = [f"big-{i}" for i in range(4)]
    publisher.publish_many(command(project_id, i) for i in ids)
    records = wait_final(results, project_id, ids)
    assert {r["status"] for r in records.values()} == {"granted"}
    assert len({r["batch_id"] for r in records.values()}) == 2  # the halves
    sandbox_faults(script=[{"status": 413, "body": "Request Entity Too Large"}])
    publisher.publish(command(project_id, "big-alone"))
    record = wait_final(results, project_id, ["big-alone"])["big-alone"]
    assert record["status"] == "rejected" and "413" in record["error"]


def test_a_404_naming_an_item_still_isolates_it_by_splitting(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(
        script=[
            {
                "status": 404,
                "body": json.dumps(
                    {"statusCode": 404, "errorCode": 4001, "errorMessage": "[0401]: Item with sku = 'x' not found"}
                ),
            }
        ]
        * 3
    )
    ids = [f"sku404-{i}" for i in range(2)]
    publisher.publish_many(command(project_id, i) for i in ids)
    records = wait_final(results, project_id, ids)
    # Split down to single commands (the script refused the whole batch, then each half).
    assert {r["status"] for r in records.values()} == {"rejected"}
    assert all(r["attempts"] >= 1 for r in records.values())


def test_a_huge_answer_is_cut_at_the_edge_and_never_stored(stack, publisher, results, project_id, sandbox_faults):
    """A 50 MB success body neither lands in Redis nor in its AOF: the answer
    is read up to 4 MiB; unreadable, it confirms nothing (in_doubt)."""
    client = results.redis
    before = client.info("memory")["used_memory"]
    aof_before = client.info("persistence").get("aof_current_size", 0)
    sandbox_faults(script=[{"action": "pad", "bytes": 50_000_000}])
    publisher.publish(command(project_id, "huge-1"))
    record = wait_final(results, project_id, ["huge-1"], timeout=30)["huge-1"]
    assert record["status"] == "in_doubt" and "did not report" in record["error"]
    assert client.info("memory")["used_memory"] - before < 5_000_000
    assert client.info("persistence").get("aof_current_size", 0) - aof_before < 5_000_000


def test_an_answer_naming_another_user_confirms_nothing(stack, publisher, results, project_id, sandbox_faults):
    sandbox_faults(script=[{"action": "wrong_user"}])
    publisher.publish(command(project_id, "who-1", user="the-buyer"))
    record = wait_final(results, project_id, ["who-1"])["who-1"]
    assert record["status"] == "in_doubt" and "another user" in record["error"]


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_replay_limit_must_be_positive(stack, limit):
    out = subprocess.run(
        [sys.executable, "-m", "ops", "replay", "--status", "failed", "--limit", limit],
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "at least 1" in out.stderr and "Traceback" not in out.stderr
