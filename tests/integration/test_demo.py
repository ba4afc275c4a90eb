"""`make run` runs `grants demo`: the whole stack on the bundled sample feed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devstack.localstack import REPO_ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_the_sample_feed_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTS_")}
    out = subprocess.run(
        [sys.executable, "-m", "ops", "demo", "--no-keep", "--workdir", str(tmp_path / "demo"), "--flower-port", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
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
    # One sample project per backend.
    assert "10-534-0003    granted    revoked" in text
    assert "10-534-9999    cancelled  noop" in text
    assert text.count("granted   ") >= 6 and "== PlayFab: project 9001" in text
    playfab = text.split("== PlayFab")[1].split("== Xsolla Backpack")[0]
    assert playfab.count(" granted ") == 6
    backpack = text.split("== Xsolla Backpack")[1]
    for kind in ("game_key", "virtual_item", "virtual_currency", "promo_code"):
        assert kind in backpack
    assert "is_external_vc=" in backpack
