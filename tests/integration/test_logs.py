"""One log stream: a real `celery -A worker worker` in JSON mode writes
nothing but JSON objects, one a line, on stdout and on stderr alike: our
lines, Celery's and the libraries' (task received, ready, warnings), and
what Celery would print itself (its banner, its shutdown notice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from devstack.localstack import REPO_ROOT, Stack, wait_until
from producers.publisher import Publisher
from tests.conftest import FAST
from tests.helpers import command, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration


def test_a_worker_in_json_mode_writes_only_json_lines(tmp_path, project_id):
    stack = Stack(tmp_path, settings_env=FAST)
    out_path, err_path = tmp_path / "worker.stdout", tmp_path / "worker.stderr"
    worker = None
    try:
        stack.start_redis()
        stack.start_sandbox()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO", "-c", "2"],
                env=stack.env(GRANTS_LOG_FORMAT="json", PYTHONWARNINGS="always"),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        wait_until(lambda: worker.poll() is None and " ready." in err_path.read_text(), 60, "the worker")
        results = Results(connect(stack.redis_url), Keys())
        publisher = Publisher(Settings(redis_url=stack.redis_url))
        # Warning-worthy: a 429 (the batch backs off), a lost answer (in doubt).
        limited, doubtful = project_id + 80_000, project_id + 81_000
        stack.sandbox_put(
            "/sandbox/faults",
            {
                "script": [
                    {"status": 429, "retry_after": 1, "path": f"/project/{limited}/"},
                    {"action": "drop", "path": f"/project/{doubtful}/"},
                ]
            },
        )
        publisher.publish_many([command(project_id, "lg-1"), command(limited, "lg-2"), command(doubtful, "lg-3")])
        wait_final(results, project_id, ["lg-1"])
        wait_final(results, limited, ["lg-2"])
        assert wait_final(results, doubtful, ["lg-3"])["lg-3"]["status"] == "in_doubt"
        # A warm shutdown: Celery prints its notice to stdout itself.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        stack.stop()

    lines = []
    for path in (out_path, err_path):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{path.name} line {number} is not JSON: {line!r}")
    events = [str(e.get("event")) for e in lines]
    loggers = {e.get("logger") for e in lines}
    # Celery's own lines are among them, as JSON with their logger's name.
    assert any(e.endswith(" ready.") for e in events), events
    assert any("grants.send_batches" in e and "received" in e for e in events)
    assert {"celery.worker.strategy", "celery.app.trace"} <= loggers, loggers
    # Celery's shutdown notice, a plain print of its own, is said as JSON instead.
    assert any(e.get("event") == "worker shutting down" and e.get("how") == "Warm" for e in lines), events[-5:]
    if os.geteuid() == 0:  # Celery's SecurityWarning, before logging is set up by Celery
        assert "py.warnings" in loggers
    # The warnings of the workload, each a JSON line with its level.
    assert any(e.get("level") == "warning" and e.get("event") == "command in_doubt" for e in lines)
    assert any(e.get("level") == "warning" and e.get("event") == "batch will retry" for e in lines)
    assert any(e.get("event") == "worker starting" for e in lines)
    assert all("level" in e and "timestamp" in e for e in lines)
