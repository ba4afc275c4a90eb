"""What a worker tells Prometheus: the metric contract, the per-process
meter and the ledger's shared numbers.

Two sources, so that nothing doubles when several workers run:

- **Per process** (:class:`Meter`): what this process did: commands it
  ingested, backend calls it made (by backend, endpoint = the command kind,
  status class) and their duration, operations per call, retries and lane
  backoffs. Under Celery's prefork pool every pool process counts into its
  own file (prometheus_client's multiprocess mode, set up by
  worker/monitor.py before the pool forks) and the worker's endpoint sums
  them. Prometheus sums the workers; a restarted worker starts from zero,
  which ``rate()`` absorbs.
- **Shared state** (:class:`LedgerCollector`): what the ledger knows for
  everyone: outcomes by status, the purchase -> outcome latency, operator
  actions, dead letters (counters read from the ledger's own counts, exact
  across restarts), backlog, ages, lag, batches in flight, in_doubt and
  failed now, paused lanes, Redis memory (gauges). Exported by one worker
  only, the leader (``grants_leader`` 1); queries aggregate ``instance``
  away, so a new leader continues the same lines.

Labels stay bounded: kind, project, backend, status, status class, reason;
never a user or a purchase id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from schemas.kinds import KINDS
from schemas.records import Status
from worker import errors
from worker.keys import LATENCY_BUCKETS_MS, Keys

if TYPE_CHECKING:
    import redis

    from worker.settings import Settings

# An in_doubt or failed index larger than this is counted whole, not split
# by project: reading 10,000 members takes Redis ~2 ms, at every scrape.
TROUBLE_SPLIT_MAX = 10_000

# The contract (name -> type); deploy/ (dashboard, alerts) may query only
# these (tests/unit/deploy/test_deploy_monitoring.py).
PER_PROCESS: dict[str, str] = {
    "grants_commands_received_total": "counter",
    "grants_backend_calls_total": "counter",
    "grants_backend_call_duration_seconds": "histogram",
    "grants_operations_per_call": "histogram",
    "grants_retries_total": "counter",
    "grants_lane_backoffs_total": "counter",
}
SHARED: dict[str, str] = {
    "grants_outcomes_total": "counter",
    "grants_purchase_to_outcome_seconds": "histogram",
    "grants_replays_total": "counter",
    "grants_resolutions_total": "counter",
    "grants_dead_letters_total": "counter",
    "grants_backlog": "gauge",
    "grants_oldest_waiting_seconds": "gauge",
    "grants_batches_in_flight": "gauge",
    "grants_ingest_lag_entries": "gauge",
    "grants_ingest_lag_seconds": "gauge",
    "grants_in_doubt": "gauge",
    "grants_failed": "gauge",
    "grants_lane_paused": "gauge",
    "grants_redis_memory_used_bytes": "gauge",
    "grants_redis_memory_max_bytes": "gauge",
}
# Every worker says whether it is the leader.
EVERY_WORKER: dict[str, str] = {"grants_leader": "gauge"}
METRICS: dict[str, str] = {**PER_PROCESS, **SHARED, **EVERY_WORKER}

# Seconds: a fast backend answers in tens of ms; a slow one is cut at the
# HTTP budget (connect + write + read timeouts, 40 s by default).
CALL_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
# Operations in one call: 1 (Backpack, PlayFab revokes) up to 50 (Xsolla).
OPS_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50)


def status_class(answer: Any) -> str:
    """The status class of a call's answer: 2xx, 3xx, 4xx, 5xx, or timeout /
    connection when no HTTP answer came (an errors.BackendError, or results)."""
    if not isinstance(answer, errors.BackendError):
        return "2xx"
    if answer.status:
        return f"{answer.status // 100}xx"
    if isinstance(answer, errors.ConnectFailed):
        return "connection"
    if isinstance(answer, errors.OutcomeUnknown):
        return "timeout" if "in time" in str(answer) else "connection"
    return "none"  # refused before it left (NotSent)


class Meter:
    """This process's counters (prometheus_client; multiprocess-safe when
    worker/monitor.py set the pool up for it). Built after the fork."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # Not in a registry: the endpoint reads the pool's files
        # (worker/monitor.py). One Meter per process (the runtime's): in
        # multiprocess mode two would write the same series over each other.

        self.received = Counter(
            "grants_commands_received", "Commands ingested, by result", ["kind", "project", "result"], registry=None
        )
        self.calls = Counter(
            "grants_backend_calls",
            "Backend calls (one per batch attempt)",
            ["backend", "endpoint", "status_class"],
            registry=None,
        )
        self.duration = Histogram(
            "grants_backend_call_duration_seconds",
            "Duration of backend calls",
            ["backend", "endpoint"],
            buckets=CALL_BUCKETS_S,
            registry=None,
        )
        self.ops = Histogram(
            "grants_operations_per_call",
            "Operations (commands) in one backend call",
            ["backend"],
            buckets=OPS_BUCKETS,
            registry=None,
        )
        self.retries = Counter(
            "grants_retries", "Batches put back to retry later, by reason", ["backend", "reason"], registry=None
        )
        self.backoffs = Counter(
            "grants_lane_backoffs",
            "Lanes held back as a whole (429, a wrong endpoint)",
            ["backend", "reason"],
            registry=None,
        )

    def call(self, backend: str, endpoint: str, answer: Any, seconds: float, operations: int) -> None:
        """One backend call made (answer: its results, or the BackendError)."""
        self.calls.labels(backend, endpoint, status_class(answer)).inc()
        self.duration.labels(backend, endpoint).observe(seconds)
        self.ops.labels(backend).observe(operations)

    def retry(self, backend: str, error: Exception, lane_wide: bool) -> None:
        reason = type(error).__name__
        self.retries.labels(backend, reason).inc()
        if lane_wide:
            self.backoffs.labels(backend, reason).inc()

    def ingested(self, results: Iterable[Any], refused: int) -> None:
        """Commands the ingestion loop just claimed (their result codes) and refused."""
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for r in results:
            result = {"dup": "duplicate"}.get(r.result, r.result)
            counts[(r.command.kind, str(r.command.project_id), result)] += 1
        for labels, n in counts.items():
            self.received.labels(*labels).inc(n)
        if refused:
            self.received.labels("", "", "dead").inc(refused)


class NoMeter(Meter):
    """Metrics off (GRANTS_METRICS_PORT unset): counts nothing, costs nothing."""

    def __init__(self) -> None:
        pass

    def call(self, backend: str, endpoint: str, answer: Any, seconds: float, operations: int) -> None:
        pass

    def retry(self, backend: str, error: Exception, lane_wide: bool) -> None:
        pass

    def ingested(self, results: Iterable[Any], refused: int) -> None:
        pass


def _split(field: str, parts: int) -> list[str]:
    return field.split("|", parts - 1)


class LedgerCollector:
    """The shared numbers, read from Redis at each scrape (on the leader)."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, is_leader: Any):
        self.redis = client
        self.keys = keys
        self.settings = settings
        self.is_leader = is_leader  # () -> bool

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol."""
        from prometheus_client.core import GaugeMetricFamily

        leader = bool(self.is_leader())
        yield GaugeMetricFamily("grants_leader", "1 on the worker exporting the shared metrics", value=int(leader))
        if leader:
            yield from self.shared()

    def shared(self) -> Iterator[Any]:
        """The shared series (what the leader exports)."""
        yield from self._counts()
        yield from self._now()

    def _backend(self, kind: str, project: str) -> str:
        from worker.backends.registry import backend_name

        try:
            return backend_name(self.settings, kind, int(project))
        except (KeyError, ValueError):
            return ""

    def _counts(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.totals)
        pipe.hgetall(self.keys.latency)
        pipe.hgetall(self.keys.operator_actions)
        totals, latency, actions = pipe.execute()
        outcomes = CounterMetricFamily(
            "grants_outcomes",
            "Final outcomes, by status (from the ledger)",
            labels=["kind", "project", "backend", "status"],
        )
        dead = CounterMetricFamily("grants_dead_letters", "Entries and messages that were not valid commands")
        for field, n in totals.items():
            if field == "dead":
                dead.add_metric([], int(n))
                continue
            kind, project, status = _split(field, 3)
            outcomes.add_metric([kind, project, self._backend(kind, project), status], int(n))
        yield outcomes
        yield dead
        yield self._latency(latency)
        replays = CounterMetricFamily(
            "grants_replays",
            "Commands replayed by operators, by the status they left",
            labels=["kind", "project", "from_status"],
        )
        resolutions = CounterMetricFamily(
            "grants_resolutions", "In-doubt commands settled by operators", labels=["kind", "project", "as_status"]
        )
        for field, n in actions.items():
            action, kind, project, result = _split(field, 4)
            family = {"replay": replays, "resolve": resolutions}.get(action)
            if family is not None:
                family.add_metric([kind, project, result], int(n))
        yield replays
        yield resolutions

    @staticmethod
    def _latency(raw: dict[str, str]) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(
            "grants_purchase_to_outcome_seconds", "From publish to final outcome", labels=["kind", "project"]
        )
        per: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for field, n in raw.items():
            kind, project, bucket = _split(field, 3)
            per[(kind, project)][bucket] = int(n)
        for (kind, project), counts in sorted(per.items()):
            running, buckets = 0, []
            for le in LATENCY_BUCKETS_MS:
                running += counts.get(str(le), 0)
                buckets.append((str(le / 1000), running))
            buckets.append(("+Inf", running + counts.get("+Inf", 0)))
            family.add_metric([kind, project], buckets, sum_value=counts.get("sum_ms", 0) / 1000)
        return family

    def _now(self) -> Iterator[Any]:
        (sec, usec) = self.redis.time()
        now_ms = sec * 1000 + usec // 1000
        yield from self._waiting(now_ms)
        yield from self._ingest_lag(now_ms)
        yield from self._troubles()
        yield from self._memory()

    def _waiting(self, now_ms: int) -> Iterator[Any]:
        """Backlog and its age per lane, batches in flight, paused lanes."""
        from prometheus_client.core import GaugeMetricFamily

        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(k.lanes, 0, -1, withscores=True)
        pipe.zrange(k.leases, 0, -1)
        pipe.hkeys(k.paused_lanes)
        lanes, leases, paused = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for lane, _ in lanes:
            pipe.llen(k.buffer(lane))
        for batch_id in leases:
            pipe.hget(k.batch(batch_id), "old")
        replies = pipe.execute()
        lengths, olds = replies[: len(lanes)], replies[len(lanes) :]

        backlog = GaugeMetricFamily("grants_backlog", "Commands waiting for a batch", labels=["kind", "project"])
        # The oldest command not finished: in a buffer, or in a batch taken
        # (being sent, or backing off after a 429), which keeps it as 'old'.
        received: dict[str, float] = {lane: score for lane, score in lanes}
        for batch_id, old in zip(leases, olds, strict=True):
            lane = batch_id.partition("|")[2]
            if old:
                received[lane] = min(received.get(lane, float(old)), float(old))
        for (lane, _), n in zip(lanes, lengths, strict=True):
            kind, _, project = lane.partition(":")
            backlog.add_metric([kind, project], n)
        yield backlog
        oldest = GaugeMetricFamily(
            "grants_oldest_waiting_seconds",
            "Age of the oldest command not finished (waiting, being sent or backing off)",
            labels=["kind", "project"],
        )
        for lane, received_ms in sorted(received.items()):
            kind, _, project = lane.partition(":")
            oldest.add_metric([kind, project], max(0.0, (now_ms - received_ms) / 1000))
        yield oldest

        flying: dict[tuple[str, str], int] = defaultdict(int)
        for batch_id in leases:
            kind, _, project = batch_id.partition("|")[2].partition(":")
            flying[(kind, project)] += 1
        in_flight = GaugeMetricFamily(
            "grants_batches_in_flight",
            "Batches taken and not finished (dispatched, sending or backing off)",
            labels=["kind", "project"],
        )
        for labels, n in sorted(flying.items()):
            in_flight.add_metric(list(labels), n)
        yield in_flight

        paused_family = GaugeMetricFamily("grants_lane_paused", "1 for a paused lane", labels=["kind", "project"])
        for lane in paused:
            kind, _, project = lane.partition(":")
            paused_family.add_metric([kind, project], 1)
        yield paused_family

    def _ingest_lag(self, now_ms: int) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.keys.commands)
        pipe.xrange(self.keys.commands, count=1)
        entries, first = pipe.execute()
        # Ingested entries are trimmed: what the stream holds is the lag.
        yield GaugeMetricFamily("grants_ingest_lag_entries", "Stream entries not ingested yet", value=entries)
        lag_s = max(0.0, (now_ms - int(first[0][0].partition("-")[0])) / 1000) if first else 0.0
        yield GaugeMetricFamily("grants_ingest_lag_seconds", "Age of the oldest entry not ingested yet", value=lag_s)

    def _troubles(self) -> Iterator[Any]:
        """In doubt and failed now, per project where the index is small enough to read.

        A count is one ZCARD; splitting it by project reads the index's members,
        so an index past TROUBLE_SPLIT_MAX (a long outage's failures) is
        reported whole, under ``project=""``, rather than read at every scrape.
        """
        from prometheus_client.core import GaugeMetricFamily

        families = {
            Status.in_doubt: GaugeMetricFamily("grants_in_doubt", "Commands in doubt now", labels=["kind", "project"]),
            Status.failed: GaugeMetricFamily(
                "grants_failed", "Commands failed now (replayable)", labels=["kind", "project"]
            ),
        }
        for status, family in families.items():
            for kind in KINDS:
                index = self.keys.index(status.value, kind)
                size = self.redis.zcard(index)
                if size > TROUBLE_SPLIT_MAX:
                    family.add_metric([kind, ""], size)
                    continue
                per: dict[str, int] = defaultdict(int)
                for member in self.redis.zrange(index, 0, -1) if size else ():
                    per[member.partition(":")[0]] += 1
                for project, n in sorted(per.items()):
                    family.add_metric([kind, project], n)
            yield family

    def _memory(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        memory = self.redis.info("memory")
        yield GaugeMetricFamily("grants_redis_memory_used_bytes", "Redis used_memory", value=memory["used_memory"])
        yield GaugeMetricFamily(
            "grants_redis_memory_max_bytes", "Redis maxmemory (0: no limit)", value=memory.get("maxmemory", 0)
        )
