"""The metrics endpoint's collectors when Redis cannot answer."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.localstack import free_port
from worker.keys import Keys
from worker.metrics import LedgerCollector
from worker.monitor import _SafeCollector
from worker.settings import Settings


def test_a_leader_whose_redis_is_away_still_says_it_leads():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0), decode_responses=True)
    collector = _SafeCollector(LedgerCollector(dead, Keys(), Settings(), lambda: True))
    families = {f.name: f for f in collector.collect()}
    assert set(families) == {"grants_leader"}  # the shared series are left out, not the scrape
    assert families["grants_leader"].samples[0].value == 1
