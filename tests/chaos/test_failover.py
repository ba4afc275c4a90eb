"""The Redis primary lost while its replica lags, during a live run
(tests/chaos/failover.py has the rig and what it checks)."""

from __future__ import annotations

import pytest

from tests.chaos.failover import WORKERS, run_once

pytestmark = pytest.mark.integration


def quiet(*_args: object) -> None:
    pass


def test_with_a_replica_confirming_nothing_acknowledged_is_lost_or_doubled(tmp_path):
    report = run_once(tmp_path / "rig", min_replicas=1, purchases=3000, say=quiet)
    print(report.line())
    assert report.promoted, report.events
    assert report.workers_alive == WORKERS
    assert report.lost == 0
    assert report.doubles == 0
    assert report.in_doubt <= report.in_doubt_bound
    assert report.granted + report.in_doubt == report.acknowledged
    assert report.publish_failures > 0  # publishes the replica did not confirm were refused, and retried


def test_without_replica_confirmation_the_rig_loses_acknowledged_publishes(tmp_path):
    # The same rig with GRANTS_REDIS_MIN_REPLICAS=0: the divergence the
    # setting guards against is real, and it loses acknowledged purchases.
    report = run_once(tmp_path / "rig", min_replicas=0, purchases=1500, say=quiet)
    print(report.line())
    assert report.promoted, report.events
    assert report.workers_alive == WORKERS
    assert report.lost > 0
