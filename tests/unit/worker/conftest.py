"""The ledger and results store on the test's private Redis (tests/conftest.py
``redis_client``), as most worker unit tests use them; a module that needs
other batch limits defines its own ``ledger``."""

from __future__ import annotations

import pytest

from worker.ledger import Ledger
from worker.results import Results


@pytest.fixture
def ledger(redis_client):
    client, keys = redis_client
    return Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 50}, default_batch_limit=50)


@pytest.fixture
def results(redis_client):
    client, keys = redis_client
    return Results(client, keys)
