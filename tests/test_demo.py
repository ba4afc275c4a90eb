"""`make run` runs `grants demo`: the whole stack on the bundled sample feed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from producers.localstack import REPO_ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_the_sample_feed_end_to_end(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("GRANTS_")}
    out = subprocess.run(
        [sys.executable, "-m", "producers.cli", "demo", "--no-keep", "--workdir", str(tmp_path / "demo"),
         "--flower-port", "0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    # The sample's three invalid lines are named by line and field.
    assert "invalid: line 9: items[0].sku:" in text
    assert "invalid: line 15: purchase.currency:" in text
    assert "invalid: line 36: (json)" in text
    assert "40 granted, 1 rejected; conflicts recorded: 1" in text
    assert "conflicting repeat refused" in text
    assert "== sandbox balances" in text and "player-ana" in text
    assert "Flower (tasks, workers, queues): http://127.0.0.1:" in text
