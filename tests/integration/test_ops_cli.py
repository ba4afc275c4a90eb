"""The operator's command line on the real stack, run as a separate process
(`python -m ops`): it names the store it reads and fails in one line; stats
tell the real age under a 429 backoff; lanes pause and resume a project;
dead letters are listed, shown whole and purged; lists take several
statuses and say how many of how many they show."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from devstack.localstack import REPO_ROOT, free_port, redis_binary, wait_until
from tests.helpers import command, grants, wait_final
from worker.keys import Keys
from worker.metrics import LedgerCollector
from worker.settings import Settings

pytestmark = pytest.mark.integration


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stderr and "Error:" not in out.stderr.replace("Error 111", ""), out.stderr


def test_the_cli_names_the_store_and_warns_of_an_empty_prefix(stack):
    out = grants(stack, "results", "stats", GRANTS_KEY_PREFIX="nobody-uses-this")
    assert f"store {stack.redis.url}, key prefix 'nobody-uses-this'" in out.stderr
    assert "warning: this Redis holds nothing under the prefix 'nobody-uses-this'" in out.stderr
    used = grants(stack, "results", "stats")
    assert f"store {stack.redis.url}, key prefix 'grants'" in used.stderr and "warning" not in used.stderr


@pytest.mark.parametrize(
    "argv", [("results", "stats"), ("dead", "list"), ("lanes", "list"), ("publish", "--project-id", "7", "-")]
)
def test_not_a_url_is_one_line_and_exit_2(stack, argv):
    out = grants(stack, *argv, expect=2, GRANTS_REDIS_URL="notaurl")
    no_traceback(out)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "GRANTS_REDIS_URL='notaurl' is not a Redis URL" in lines[0], out.stderr


def test_an_unreachable_redis_is_one_line_and_exit_2(stack):
    port = free_port()
    out = grants(stack, "results", "stats", expect=2, GRANTS_REDIS_URL=f"redis://:pw@127.0.0.1:{port}/0")
    no_traceback(out)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in out.stderr.splitlines()[-1]
    assert ":pw@" not in out.stderr


def test_missing_or_wrong_credentials_are_one_line_and_exit_2(stack, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "right", "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: redis.Redis(port=port, password="right").ping(), 15, "redis with a password")
        for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
            out = grants(stack, "results", "stats", expect=2, GRANTS_REDIS_URL=url)
            no_traceback(out)
            assert "refused the credentials" in out.stderr.splitlines()[-1], out.stderr
            assert "wrong" not in out.stderr
        ok = grants(stack, "results", "stats", GRANTS_REDIS_URL=f"redis://:right@127.0.0.1:{port}/0")
        assert "warning: this Redis holds nothing" in ok.stderr and "right" not in ok.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_output_cut_short_by_its_reader_ends_quietly(stack):
    # A reader that is gone before anything is written: every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run(
        [sys.executable, "-m", "ops", "results", "stats"],
        env=stack.env(),
        cwd=REPO_ROOT,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141
    # And as an operator types it.
    shell = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m ops results stats | head -1"],
        env=stack.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0 and shell.stdout.startswith("commands by status")
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr


def test_stats_oldest_age_under_a_429_backoff_is_the_real_age(stack, publisher, results, project_id, sandbox_faults):
    # The first call is answered 429 with Retry-After 8 s: the whole batch
    # (taken already, nothing left in a buffer) backs off.
    sandbox_faults(script=[{"status": 429, "retry_after": 8, "path": "/purchase"}])
    ids = [f"bo-{n}" for n in range(30)]
    published_at = time.time()
    publisher.publish_many([command(project_id, i) for i in ids])
    wait_until(lambda: not stack.sandbox_get("/sandbox/faults")["script"], 10, "the 429 answered")
    time.sleep(2.5)
    before = time.time()
    out = grants(stack, "results", "stats", "--project-id", str(project_id), "--json")
    after = time.time()
    stats = json.loads(out.stdout)
    assert stats["counts"]["pending"] + stats["counts"]["sending"] == 30 and stats["waiting"] == 0
    assert stats["batches_backing_off"] >= 1
    real_age = (before + after) / 2 - published_at
    assert abs(stats["oldest_waiting_age_s"] - real_age) <= 1.0, (stats["oldest_waiting_age_s"], real_age)
    assert stats["oldest_waiting_lane"] == f"grant:{project_id}"
    text = grants(stack, "results", "stats", "--project-id", str(project_id)).stdout
    shown = re.search(rf"oldest waiting ([\d.]+) s \(grant:{project_id}\)", text)
    assert shown and abs(float(shown.group(1)) - (time.time() - published_at)) <= 1.0, text
    assert "{" not in text and "'" not in text  # no Python reprs
    # The metric an alert watches says the same (the leader's collector, on this Redis).
    collector = LedgerCollector(stack.redis.client(), Keys(), Settings(redis_url=stack.redis_url), lambda: True)
    family = next(f for f in collector.collect() if f.name == "grants_oldest_waiting_seconds")
    exported = {s.labels["project"]: s.value for s in family.samples if s.labels["kind"] == "grant"}
    assert abs(exported[str(project_id)] - (time.time() - published_at)) <= 1.0, exported
    records = wait_final(results, project_id, ids, timeout=40)
    assert {r["status"] for r in records.values()} == {"granted"}
    assert stack.audit_counts(project_id) == dict.fromkeys(ids, 1)


def test_a_paused_project_sends_nothing_until_resumed(stack, publisher, results, project_id):
    grants(stack, "lanes", "pause", "--project-id", str(project_id), "--actor", "anna", "--note", "maintenance")
    ids = [f"pz-{n}" for n in range(12)]
    publisher.publish_many([command(project_id, i) for i in ids])
    wait_until(
        lambda: all((results.get(project_id, i) or {}).get("status") == "pending" for i in ids), 10, "all ingested"
    )
    time.sleep(2)  # ten flush intervals
    assert stack.audit_counts(project_id) == {}
    assert {results.get(project_id, i)["status"] for i in ids} == {"pending"}
    listed = json.loads(grants(stack, "lanes", "list", "--project-id", str(project_id), "--json").stdout)
    lane = next(x for x in listed if x["lane"] == f"grant:{project_id}")
    assert lane["waiting"] == 12 and lane["paused"]["actor"] == "anna" and lane["paused"]["note"] == "maintenance"
    stats = json.loads(grants(stack, "results", "stats", "--project-id", str(project_id), "--json").stdout)
    assert f"grant:{project_id}" in [p["lane"] for p in stats["paused_lanes"]]
    metrics_lane = stack.redis.client().hkeys("grants:lanes:paused")
    assert f"grant:{project_id}" in metrics_lane  # what grants_lane_paused exports
    grants(stack, "lanes", "resume", "--project-id", str(project_id))
    records = wait_final(results, project_id, ids, timeout=30)
    assert {r["status"] for r in records.values()} == {"granted"}
    assert stack.audit_counts(project_id) == dict.fromkeys(ids, 1)


def test_dead_letters_are_listed_shown_whole_and_purged(stack, project_id):
    client = stack.redis.client()
    raw = json.dumps({"not": "a command", "project": project_id, "pad": "x" * 300})
    client.xadd("grants:commands", {"command": raw})

    def ours() -> list[dict]:
        letters = json.loads(grants(stack, "dead", "list", "--limit", "100000", "--json").stdout)
        return [d for d in letters if d["raw"] == raw]

    wait_until(ours, 15, "the dead letter", interval=0.2)
    (letter,) = ours()
    listed = grants(stack, "dead", "list", "--limit", "100000")
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "RECEIVED", "SOURCE", "PURCHASE_ID", "BYTES", "REASON"]
    row = next(r for r in rows if r.startswith(letter["id"] + " "))
    # The reason starts under its header.
    assert row[header.index("REASON") :].startswith(letter["reason"][:20])
    assert "showing" in listed.stderr
    shown = grants(stack, "dead", "show", letter["id"])
    assert raw in shown.stdout and letter["reason"] in shown.stdout
    assert grants(stack, "dead", "show", letter["id"], "--raw").stdout == raw
    dry = grants(stack, "dead", "purge", letter["id"])
    assert "would delete 1" in dry.stdout and ours()
    assert "deleted 1" in grants(stack, "dead", "purge", letter["id"], "--yes").stdout
    assert ours() == []
    assert grants(stack, "dead", "show", letter["id"], expect=1).stdout == ""
    assert client.zscore("grants:idx:dead", letter["id"]) is None


def test_a_list_of_several_statuses_says_how_many_of_how_many(stack, publisher, results, project_id, sandbox_faults):
    # A lone purchase refused 400 is rejected (a batch of one cannot split).
    sandbox_faults(script=[{"status": 400, "path": "/purchase"}])
    publisher.publish(command(project_id, "ms-bad"))
    assert wait_final(results, project_id, ["ms-bad"])["ms-bad"]["status"] == "rejected"
    ids = [f"ms-{n}" for n in range(4)]
    publisher.publish_many([command(project_id, i) for i in ids])
    wait_final(results, project_id, ids)
    pid = str(project_id)
    out = grants(stack, "results", "list", "--status", "rejected", "--status", "granted", "--project-id", pid)
    assert "showing 5 of 5 grant records (rejected, granted)" in out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PROJECT", "EXTERNAL_PURCHASE_ID", "STATUS", "ATTEMPTS", "SPLITS", "WHEN", "REASON"]
    assert {line.split()[1] for line in lines[1:]} == {"ms-bad", *ids}
    # Columns line up under their headers.
    at = lines[0].index("STATUS")
    assert all(line[at:].split()[0] in ("granted", "rejected") for line in lines[1:])
    limited = grants(stack, "results", "list", "--status", "rejected,granted", "--project-id", pid, "--limit", "2")
    assert "showing 2 of 5 grant records" in limited.stderr and len(limited.stdout.splitlines()) == 3
    whole = json.loads(grants(stack, "results", "get", "ms-bad", "--project-id", pid).stdout)
    assert whole["status"] == "rejected" and whole["error"] and whole["attempts"] == 1
