"""What a finished grant costs in Redis: 30,000 purchases through the real
stack, then Redis's own accounting (INFO used_memory) before and after.

Counted: everything the grant leaves behind for its retention, its record,
its claim with the refund data, its outcome stream entry, minus nothing.
The target is 700 bytes (README "Capacity"); the test fails over 900, so
that noise (allocator classes, a stray broker message) never flips it.
"""

from __future__ import annotations

import pytest

from devstack.localstack import wait_until
from producers.publisher import Publisher
from tests.conftest import make_stack
from tests.helpers import command
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration

PURCHASES = 30_000
LIMIT_BYTES = 900


def test_a_finished_grant_costs_under_900_bytes(tmp_path, project_id):
    stack = make_stack(tmp_path, workers=1, concurrency=4)
    try:
        client = connect(stack.redis_url)
        results = Results(client, Keys())
        publisher = Publisher(Settings(redis_url=stack.redis_url))
        # Warm: scripts loaded, queues and counters made, before the baseline.
        publisher.publish(command(project_id, "warm"))
        wait_until(lambda: results.stats()["counts"]["granted"] == 1, 30, "the warm-up grant")
        before = int(client.info("memory")["used_memory"])

        publisher.publish_many(
            command(project_id, f"purchase-{i:07d}", user=f"player-{i % 5000}", sku="gem.pack.100")
            for i in range(PURCHASES)
        )
        wait_until(lambda: results.stats()["counts"]["granted"] == PURCHASES + 1, 180, "every grant", 0.5)
        wait_until(lambda: client.xlen(Keys().commands) == 0, 10, "the command stream trimmed")
        per_grant = (int(client.info("memory")["used_memory"]) - before) / PURCHASES

        record = client.memory_usage(Keys().record(project_id, "purchase-0000001"))
        claims = sum(client.memory_usage(f"{Keys().prefix}:claims:{n}") or 0 for n in range(1024)) / PURCHASES
        outcome = (client.memory_usage(Keys().outcomes) or 0) / client.xlen(Keys().outcomes)
        breakdown = f"record {record} B, claim {claims:.0f} B, outcome entry {outcome:.0f} B"
        print(f"{per_grant:.0f} bytes per finished grant ({breakdown})")
        assert per_grant <= LIMIT_BYTES, f"{per_grant:.0f} bytes per grant: {breakdown}"
        # What it must still know: shown whole, revocable, recognised.
        view = results.get(project_id, "purchase-0000001")
        assert view is not None and view["status"] == "granted"
        assert view["command"]["operation"]["user"] == {"id": "player-1"}
        assert view["command"]["operation"]["purchase"]["external_purchase_id"] == "purchase-0000001"
        assert view["batch_id"].endswith(f"|grant:{project_id}")
    finally:
        stack.stop()
