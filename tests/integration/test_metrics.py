"""The worker's /metrics, /livez and /readyz, scraped from real workers after
a known workload (real Redis, sandbox and `celery worker` processes)."""

from __future__ import annotations

import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.localstack import Stack, free_port, wait_until
from producers.publisher import Publisher
from tests.conftest import FAST
from tests.helpers import command, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration

GRANTED, DUPLICATES, CONFLICTS = 40, 5, 2


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one worker's /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def everyone(ports: list[int]) -> dict:
    """All workers' samples added up (what a Prometheus sum() sees)."""
    out: dict = {}
    for port in ports:
        for key, value in scrape(port).items():
            out[key] = out.get(key, 0) + value
    return out


@pytest.fixture
def monitored(tmp_path):
    stack = Stack(tmp_path, settings_env=FAST)
    ports = [free_port(), free_port()]
    try:
        stack.start_redis()
        stack.start_sandbox()
        for port in ports:
            stack.start_worker(concurrency=2, GRANTS_METRICS_PORT=str(port))
        yield stack, ports
    finally:
        stack.stop()


def test_a_scrape_after_a_known_workload_shows_exactly_it(monitored, project_id):
    stack, ports = monitored
    doubt_project, rejecting_project = project_id + 50_000, project_id + 60_000
    client = connect(stack.redis_url)
    results = Results(client, Keys())
    publisher = Publisher(Settings(redis_url=stack.redis_url))
    ids = [f"m-{i}" for i in range(GRANTED)]
    publisher.publish_many(command(project_id, i) for i in ids)
    publisher.publish_many(command(project_id, i) for i in ids[:DUPLICATES])
    publisher.publish_many(command(project_id, i, quantity=7) for i in ids[-CONFLICTS:])
    # One rejected (an unknown SKU), one in doubt (its answer dropped after it applied).
    stack.sandbox_put(f"/sandbox/projects/{rejecting_project}/catalog", ["gem.pack"])
    publisher.publish(command(rejecting_project, "bad-sku", sku="no.such.sku"))
    stack.sandbox_put("/sandbox/faults", {"script": [{"action": "drop", "path": f"/project/{doubt_project}/"}]})
    publisher.publish(command(doubt_project, "lost-answer"))
    wait_final(results, project_id, ids)
    assert wait_final(results, rejecting_project, ["bad-sku"])["bad-sku"]["status"] == "rejected"
    assert wait_final(results, doubt_project, ["lost-answer"])["lost-answer"]["status"] == "in_doubt"

    samples = everyone(ports)
    assert total(samples, "grants_leader") == 1  # one worker exports the shared numbers
    p = str(project_id)
    assert total(samples, "grants_outcomes_total", project=p, status="granted", backend="xsolla") == GRANTED
    assert total(samples, "grants_outcomes_total", project=str(rejecting_project), status="rejected") == 1
    assert total(samples, "grants_outcomes_total", project=str(doubt_project), status="in_doubt") == 1
    assert total(samples, "grants_in_doubt", project=str(doubt_project)) == 1
    received = dict(kind="grant", project=p)
    assert total(samples, "grants_commands_received_total", result="new", **received) == GRANTED
    assert total(samples, "grants_commands_received_total", result="duplicate", **received) == DUPLICATES
    assert total(samples, "grants_commands_received_total", result="conflict", **received) == CONFLICTS
    # Every outcome is in the latency histogram, once.
    assert total(samples, "grants_purchase_to_outcome_seconds_count", project=p) == GRANTED
    assert total(samples, "grants_purchase_to_outcome_seconds_bucket", project=p, le="+Inf") == GRANTED
    # Calls: one per batch attempt, each with its operations counted.
    calls = total(samples, "grants_backend_calls_total", backend="xsolla")
    assert calls >= 3 and total(samples, "grants_backend_call_duration_seconds_count", backend="xsolla") == calls
    assert total(samples, "grants_operations_per_call_sum", backend="xsolla") == GRANTED + 2
    assert total(samples, "grants_backend_calls_total", status_class="4xx") >= 1  # the unknown SKU
    assert total(samples, "grants_backend_calls_total", status_class="connection") == 1  # the dropped answer
    assert total(samples, "grants_backlog") == 0 and total(samples, "grants_ingest_lag_entries") == 0

    # A worker killed and started again: what an operator reads is neither
    # doubled nor lost (the outcome counts are the ledger's own).
    stack.workers[0].signal_group(signal.SIGKILL)
    stack.workers[0].proc.wait(timeout=10)
    stack.workers.pop(0)
    stack.start_worker(concurrency=2, GRANTS_METRICS_PORT=str(ports[0]))
    wait_until(lambda: total(everyone(ports), "grants_leader") == 1, 60, "a leader after the restart", 0.5)
    after = everyone(ports)
    assert total(after, "grants_outcomes_total", project=p, status="granted") == GRANTED
    assert total(after, "grants_purchase_to_outcome_seconds_count", project=p) == GRANTED


def test_health_follows_redis(monitored):
    stack, ports = monitored
    url = f"http://127.0.0.1:{ports[0]}"
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 30, "ready")
    assert httpx.get(f"{url}/livez", timeout=5).json() == {"ok": True, "ingest_loop": True, "sweeper": True}
    assert stack.redis is not None
    stack.redis.stop()
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 503, 30, "not ready without Redis")
    body = httpx.get(f"{url}/readyz", timeout=10).json()
    assert body["redis"] is False
    # Alive all the same: restarting the worker would not bring Redis back.
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
    stack.redis.start()
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 60, "ready again", 0.5)
