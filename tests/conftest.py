"""Fixtures: a private redis-server for the session, and a whole stack
(redis, sandbox over real HTTP, real `celery -A worker worker` processes)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from devstack.localstack import RedisServer, Stack
from producers.publisher import Publisher
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

# Test stacks answer fast: short timeouts, quick retries, short leases, so
# failure paths finish in seconds. Production defaults are in worker/settings.py.
FAST = {
    "GRANTS_HTTP_READ_TIMEOUT_S": "1.5",
    "GRANTS_HTTP_CONNECT_TIMEOUT_S": "1",
    "GRANTS_HTTP_WRITE_TIMEOUT_S": "1",
    "GRANTS_RETRY_BASE_S": "0.2",
    "GRANTS_RETRY_MAX_BACKOFF_S": "2",
    "GRANTS_RETRY_MAX_ATTEMPTS": "6",
    "GRANTS_DISPATCH_LEASE_S": "3",
    "GRANTS_VISIBILITY_TIMEOUT_S": "10",
    "GRANTS_FLUSH_INTERVAL_MS": "200",
}

_project_ids = itertools.count(int(os.environ.get("GRANTS_TEST_PROJECT_BASE", "10000")))


@pytest.fixture
def project_id() -> int:
    """A project id no other test uses: tests share one sandbox and one Redis."""
    return next(_project_ids)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server, request):
    """A client on the private server; keys under a prefix unique to the test."""
    client = connect(redis_server.url)
    prefix = f"t{abs(hash(request.node.nodeid))}"
    yield client, Keys(prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def make_stack(
    tmp_path: Path,
    *,
    workers: int = 1,
    concurrency: int = 2,
    idempotent: bool = False,
    env: dict[str, str] | None = None,
) -> Stack:
    stack = Stack(tmp_path, idempotent_backend=idempotent, settings_env={**FAST, **(env or {})})
    try:
        stack.start_redis()
        stack.start_sandbox()
        for _ in range(workers):
            stack.start_worker(concurrency=concurrency)
    except Exception:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One shared stack for the integration tests that need no special config."""
    s = make_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture
def sandbox_faults(stack):
    """Set sandbox faults for one test; cleared afterwards."""

    def set_faults(**faults):
        stack.sandbox_put("/sandbox/faults", faults)

    yield set_faults
    stack.sandbox_put("/sandbox/faults", {})


def settings_for(stack: Stack, **overrides) -> Settings:
    return Settings(redis_url=stack.redis.url, **overrides)


@pytest.fixture
def publisher(stack) -> Publisher:
    return Publisher(settings_for(stack))


@pytest.fixture
def results(stack) -> Results:
    return Results(connect(stack.redis.url), Keys())
