"""The worker's monitoring endpoint on GRANTS_METRICS_PORT (off when unset):
``/metrics`` for Prometheus, ``/livez`` and ``/readyz`` for the orchestrator.

- ``/livez``: the ingestion loop and the sweeper are running (each went
  round within LIVE_S, whatever the round met: a Redis outage is not a
  reason to restart a worker, it would only lose its in-flight calls).
- ``/readyz``: Redis answers, and both loops completed a round within
  READY_S: this worker is doing its job.

The endpoint runs in the worker's main process. Metrics of the pool
processes are summed from their files (prometheus_client's multiprocess
mode: the directory is made before the pool forks, see :func:`prepare`);
the shared numbers come from the ledger, exported by the leader alone
(worker/metrics.py).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps

from worker.locks import Lock
from worker.logs import Throttle
from worker.metrics import LedgerCollector

log = structlog.get_logger("grants.monitor")

# A loop that has not gone round for this long is stuck (the ingestion loop
# blocks 0.1 s per round, the sweeper ticks every 0.1 s by default; both wait
# at most ~2 s between failing rounds).
LIVE_S = 60.0
# A loop whose last round that worked is older than this is not doing its job.
READY_S = 10.0
# The leader's lock: renewed every 10 s, lapses 30 s after its holder died
# (two scrapes at Prometheus' usual 15 s).
LEADER_TTL_MS = 30_000
LEADER_RENEW_S = 10.0

# prometheus_client reads this variable when it is first imported, to count
# in files every process of the pool can write and the endpoint can sum.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(metrics_port: int | None) -> Path | None:
    """In the main process before the pool forks: a fresh directory for the
    pool's metric files (None when metrics are off)."""
    if not metrics_port:
        return None
    path = Path(tempfile.mkdtemp(prefix="grants-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)  # the interface prometheus_client offers
    # prometheus_client picks its value class when first imported, and
    # celery's command line has imported it already (it loads Flower's
    # command, which uses it): pick again, now that the variable is set.
    # Metrics made from now on (every one of ours) count in files.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    # Removed when the main process exits, after the pool has stopped
    # writing into it.
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class Leadership:
    """Whether this worker exports the shared metrics (a lock in Redis)."""

    def __init__(self, client: Any, key: str):
        self.lock = Lock(client, key, LEADER_TTL_MS)
        self._until = 0.0
        self.stopping = threading.Event()

    def __call__(self) -> bool:
        return time.monotonic() < self._until

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.lock.hold():
                    self._until = time.monotonic() + LEADER_TTL_MS / 1000 - LEADER_RENEW_S
                else:
                    self._until = 0.0
            except Exception:  # Redis away: not the leader until it is back
                self._until = 0.0
            self.stopping.wait(LEADER_RENEW_S)


class Health:
    """The checks behind /livez and /readyz."""

    def __init__(self, client: Any, ingestor: Any, sweeper: Any):
        self.redis = client
        self.ingestor = ingestor
        self.sweeper = sweeper

    def live(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        checks = {
            "ingest_loop": now - self.ingestor.alive_at < LIVE_S,
            "sweeper": now - self.sweeper.alive_at < LIVE_S,
        }
        return all(checks.values()), checks

    def ready(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        try:
            redis_ok = bool(self.redis.ping())
        except Exception:
            redis_ok = False
        checks = {
            "redis": redis_ok,
            "ingest_loop": now - self.ingestor.last_round < READY_S,
            "sweeper": now - self.sweeper.ok_at < READY_S,
        }
        return all(checks.values()), checks


def _handler(registry: Any, health: Health) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path in ("/livez", "/readyz"):
                ok, checks = health.live() if path == "/livez" else health.ready()
                body = json.dumps({"ok": ok, **checks}).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"/metrics, /livez, /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds are not news

    return Handler


class _SafeCollector:
    """The ledger's numbers, or none while Redis cannot give them (the scrape
    still answers: the per-process numbers and grants_leader)."""

    def __init__(self, inner: LedgerCollector):
        self.inner = inner
        self.throttle = Throttle()

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        try:
            leader = bool(self.inner.is_leader())
        except Exception:
            leader = False  # Redis away: no one can tell; this worker does not export
        yield GaugeMetricFamily("grants_leader", "1 on the worker exporting the shared metrics", value=int(leader))
        if not leader:
            return
        try:
            yield from list(self.inner.shared())
        except Exception as exc:
            if self.throttle("collect"):
                log.warning("shared metrics not read (said once per 30 s)", error=str(exc))


class MonitorStep(bootsteps.StartStopStep):
    """Serves the endpoint inside ``celery worker`` (after the ingestion loop
    and the sweeper, whose health it reports)."""

    requires = {"worker.ingest:IngestStep", "worker.sweeper:SweeperStep"}  # noqa: RUF012 (Celery's bootstep API)

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.server: ThreadingHTTPServer | None = None
        self.leadership: Leadership | None = None

    def start(self, worker: Any) -> None:
        settings = worker.app.grants_settings
        path = os.environ.get(MULTIPROC_ENV)
        if not settings.metrics_port or not path:
            return
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        rt = worker.app.grants_runtime()
        client = settings.redis_client(patient=False)
        self.leadership = Leadership(client, rt.keys.metrics_lock)
        threading.Thread(target=self.leadership.run, name="grants-leader", daemon=True).start()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        registry.register(_SafeCollector(LedgerCollector(client, rt.keys, settings, self.leadership)))
        health = Health(client, worker.app.grants_ingestor, worker.app.grants_sweeper)
        self.server = ThreadingHTTPServer(("0.0.0.0", settings.metrics_port), _handler(registry, health))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="grants-metrics", daemon=True).start()
        log.info("metrics endpoint up", port=settings.metrics_port, paths="/metrics /livez /readyz")

    def stop(self, worker: Any) -> None:
        if self.leadership is not None:
            self.leadership.stopping.set()
            try:
                self.leadership.lock.release()
            except Exception:  # shutting down anyway
                pass
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
