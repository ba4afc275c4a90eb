"""The chaos run in its short form (the full one is `make chaos`): kills,
a Redis restart, backend faults and an outage, all during one run, then the
audit. See tests/chaos/harness.py."""

from __future__ import annotations

import pytest

from tests.chaos.harness import SHORT, Chaos

pytestmark = pytest.mark.integration


def test_chaos_short_run_keeps_every_grant_exactly_once(tmp_path):
    chaos = Chaos(SHORT, tmp_path / "chaos", say=lambda *_: None)
    try:
        report = chaos.run()
        logs = "".join(p.read_text(errors="replace") for p in chaos.stack.workdir.glob("*.log"))
    finally:
        chaos.stack.stop()
    print(report.line())
    assert report.kills >= 1 and report.redis_restarts >= 1
    assert report.faults.get("outage", 0) > 0, "the outage must land while calls are being made"
    assert report.doubles == 0
    assert report.unaccounted == 0
    assert report.failed_but_applied == 0
    assert report.granted_not_applied == 0
    assert not report.stats_mismatch
    assert report.in_doubt <= report.in_doubt_bound
    assert chaos.stack.api_key not in logs
