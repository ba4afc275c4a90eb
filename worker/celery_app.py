"""The Celery application: configuration from :class:`Settings`, the tasks,
and the ingestion and sweeper bootsteps. ``celery -A worker worker`` is a complete
deployment; start more of them (anywhere) for more capacity."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import structlog
from celery import Celery, signals
from kombu import Queue

from worker import logs, monitor, resolve, tasks
from worker.broker import ON_UNUSABLE
from worker.gc_tuning import tune_gc
from worker.ingest import IngestStep
from worker.migrate import migrate
from worker.redis_conn import broker_ssl_options
from worker.runtime import Runtime
from worker.settings import Settings, UnsafeRedis, check_eviction
from worker.sweeper import SweeperStep

log = structlog.get_logger("grants.worker")


def default_concurrency() -> int:
    """Pool processes when GRANTS_WORKER_CONCURRENCY is unset.

    A pool process spends most of a batch waiting on the backend and on
    Redis, so two per core keep the cores busy (4 on a 2-core machine:
    9,270 / 9,114 grants/s in the bulk benchmark against 8,879 / 9,033 with
    3 and 7,997 with 2, side by side).
    """
    return max(4, 2 * (os.cpu_count() or 1))


class GrantsCelery(Celery):
    """Celery app carrying the settings and a per-process :class:`Runtime`."""

    grants_settings: Settings
    _grants_runtime: Runtime | None = None

    def grants_runtime(self) -> Runtime:
        """This process's runtime (a forked pool child builds its own)."""
        rt = self._grants_runtime
        if rt is None or rt.pid != os.getpid():
            rt = self._grants_runtime = Runtime(self.grants_settings, self.dispatch_batches)
        return rt

    def dispatch_batches(self, batch_ids: list[str]) -> None:
        """Queue ``send_batches`` tasks, a few batches each, on one connection;
        their args as Flower shows them name the batches' purchase ids."""
        step = tasks.BATCHES_PER_TASK
        members = tasks.batch_members(self.grants_runtime(), batch_ids)
        with self.producer_or_acquire() as producer:
            for i in range(0, len(batch_ids), step):
                chunk = batch_ids[i : i + step]
                self.send_task(
                    tasks.SEND_BATCHES,
                    args=[chunk],
                    argsrepr=tasks.describe(chunk, members),
                    queue=tasks.SEND_QUEUE,
                    producer=producer,
                )


class _OnUnusable:
    """Records a queue entry kombu cannot deliver as a dead letter. A class,
    not a lambda: `celery inspect conf` (Flower asks every worker it finds)
    sends the configuration as JSON, and a function in it made each such
    request fail with a traceback in the worker's log."""

    def __init__(self, app: GrantsCelery):
        self.app = app

    def __call__(self, raw: str | bytes, queue: str, reason: str) -> str:
        return self.app.grants_runtime().record_unusable(raw, reason, source=f"queue {queue}")

    def __json__(self) -> str:
        return "dead letter (worker.celery_app)"


def broker_transport(url: str) -> str:
    """Our guarded kombu transport for the broker URL's scheme (worker/broker.py)."""
    if url.startswith("sentinel://"):
        return "worker.broker:SentinelTransport"
    return "worker.broker:Transport"


def create_app(settings: Settings) -> GrantsCelery:
    """Build the app from settings (parsed once by the entry point)."""
    app = GrantsCelery("grants", broker=settings.effective_broker_url, set_as_current=True)
    app.grants_settings = settings
    # In JSON mode every line a worker writes is one JSON object: Celery's
    # and the libraries' stdlib logging goes through structlog's formatter
    # (from here on, so warnings while the app is built are JSON too), prints
    # become log lines, and the banner is left out (its facts are in the
    # "worker starting" line).
    json_logs = logs.log_format(settings) == "json"
    if json_logs:
        logs.configure(settings)
    app.conf.update(celery_config(app, settings))
    register_tasks(app)
    add_bootsteps(app)
    connect_signals(app, settings, json_logs=json_logs)
    return app


def celery_config(app: GrantsCelery, settings: Settings) -> dict[str, Any]:
    """Celery's configuration for ``app`` from the settings."""
    return dict(
        # A message is acked only after its task ran; a task whose pool process
        # died is put back at once instead of being acked as failed.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per pool process at a time: a killed worker strands little.
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency or default_concurrency(),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Bodies are JSON text already; kombu's default base64 wrapping
            # adds a third to every byte Redis stores, logs to its AOF and
            # copies into the unacked hash. Consumers read the encoding from
            # each message, so old and new messages mix safely.
            "body_encoding": None,
            # A queue entry kombu cannot deliver becomes a dead letter.
            ON_UNUSABLE: _OnUnusable(app),
            # Through sentinels: the primary's name and their credentials.
            **settings.broker_transport_options(),
        },
        broker_transport=broker_transport(settings.effective_broker_url),
        # TLS from the broker URL; for the sentinel:// URLs built from
        # GRANTS_REDIS_SENTINELS, from GRANTS_REDIS_URL's rediss:// and ssl_*.
        broker_use_ssl=broker_ssl_options(settings.broker_url or settings.redis_url),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A running task whose broker connection dropped finishes its HTTP call
        # and records the outcome in Redis; cancelling it would create doubt.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Task events for Flower (received, started, succeeded/failed); not
        # "sent": the dispatcher is the worker itself, and that event cost its
        # main process a publish per task.
        worker_send_task_events=True,
        task_send_sent_event=False,
        task_queues=(Queue(tasks.SEND_QUEUE), Queue(tasks.OPS_QUEUE)),
        task_default_queue=tasks.OPS_QUEUE,
        # Send tasks to their queue; operator tasks go to the default one.
        # (Routes, not a task's queue= option: Celery 6 drops that.)
        task_routes={tasks.SEND_BATCHES: {"queue": tasks.SEND_QUEUE}},
        # Records undecodable / unknown-task messages as dead letters.
        worker_consumer="worker.consumer:GrantsConsumer",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )


def register_tasks(app: GrantsCelery) -> None:
    """The send task, and the operator tasks (on the default queue, grants.ops)."""
    app.task(name=tasks.SEND_BATCHES, **tasks.SEND_OPTIONS)(tasks.send_batches)
    app.task(name=tasks.REPLAY, bind=True)(tasks.replay)
    app.task(name=resolve.RESOLVE, bind=True)(resolve.resolve_task)


def add_bootsteps(app: GrantsCelery) -> None:
    """The sweeper, ingestion and monitor bootsteps of every worker."""
    app.steps["worker"].add(SweeperStep)
    app.steps["worker"].add(IngestStep)
    app.steps["worker"].add(monitor.MonitorStep)


def connect_signals(app: GrantsCelery, settings: Settings, *, json_logs: bool) -> None:
    """Connect the worker's signal handlers (below) for ``app``; in JSON mode
    also those that keep every line a JSON log line."""
    signals.worker_init.connect(partial(_startup_checks, app, settings), weak=False)
    signals.worker_process_init.connect(partial(_pool_process_ready, app), weak=False)
    signals.worker_ready.connect(_quiet_gc, weak=False)
    # Replaces Celery's own logging set-up.
    signals.setup_logging.connect(partial(_logging, settings, json_logs), weak=False)
    if json_logs:
        signals.celeryd_init.connect(_no_banner, weak=False)
        signals.celeryd_after_setup.connect(partial(_starting, app), weak=False)
        signals.worker_shutting_down.connect(_stopping, weak=False)


def _startup_checks(app: GrantsCelery, settings: Settings, **_kw: Any) -> None:
    """worker_init: the checks before anything is consumed, and the metrics
    prepared before the pool forks (its processes count their metrics in
    files). Celery logs and swallows an exception raised here, so a failed
    check exits the process itself."""
    monitor.prepare(settings.metrics_port)
    rt = app.grants_runtime()
    try:
        # A Redis that may evict keys would grant twice: refused.
        warning = check_eviction(rt.redis, allow=settings.redis_allow_eviction)
        if warning:
            log.warning(warning)
        # An older version's store is moved onto today's layout first
        # (once; the other workers wait for it).
        migrate(rt.redis, rt.keys, rt.backends.refund_data_of_stored)
    except UnsafeRedis as exc:
        log.error("worker refused to start", reason=str(exc))
        raise SystemExit(2) from None
    except Exception as exc:
        log.exception("worker could not start: the results store is unreachable or unreadable", error=str(exc))
        raise SystemExit(1) from None


def _pool_process_ready(app: GrantsCelery, **_kw: Any) -> None:
    """worker_process_init: clients (and their TLS contexts: ~0.3 s each here)
    are built before the first task, not in its time; then the start-up heap
    is frozen."""
    app.grants_runtime().backends.warm()
    tune_gc()


def _quiet_gc(**_kw: Any) -> None:
    """worker_ready: the main process's start-up heap is frozen too."""
    tune_gc()


def _logging(settings: Settings, json_logs: bool, **_kw: Any) -> None:
    """setup_logging: our logging instead of Celery's; in JSON mode prints
    become log lines."""
    logs.configure(settings)
    if json_logs:
        logs.capture_prints()


def _no_banner(instance: Any, **_kw: Any) -> None:
    """celeryd_init (JSON mode): no banner; its facts are in "worker starting"."""
    instance.quiet = True


def _starting(app: GrantsCelery, sender: str, instance: Any, **_kw: Any) -> None:
    """celeryd_after_setup (JSON mode): the banner's facts as one log line."""
    log.info(
        "worker starting",
        hostname=sender,
        # As the banner shows it (password masked).
        broker=app.connection_for_write().as_uri(),
        concurrency=instance.concurrency,
        queues=sorted(q.name for q in app.amqp.queues.consume_from.values()),
        tasks=sorted(n for n in app.tasks if not n.startswith("celery.")),
    )


def _stopping(sig: str, how: str, **_kw: Any) -> None:
    """worker_shutting_down (JSON mode): Celery's own notice ("worker: Warm
    shutdown") is a plain print; this is its log line."""
    log.info("worker shutting down", signal=sig, how=how)
