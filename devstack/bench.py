"""``grants bench``: the full stack on a generated feed, measured.

Private Redis (AOF on), the sandbox, real workers. Two modes:

- bulk (default): publishes N purchases plus D% repeats as fast as it can,
  waits for every outcome, and reports grants/s, enqueue-to-outcome latency
  (p50/p99), backend calls, mean batch size;
- live (``--live RATE --seconds S``): one producer publishing one purchase
  per ``publish()`` call at a steady RATE, open loop (each purchase has its
  scheduled time; a publisher falling behind shows up as latency), and
  reports the rate achieved, purchase -> applied latency p50/p99/max (the
  applied time from the sandbox's audit, not from our own records), the
  backlog when publishing stopped, calls and mean batch size.

Both check the sandbox's audit: every purchase applied exactly once.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devstack import metricsview
from devstack.localstack import RedisServer, Stack, free_port, wait_until
from producers.progress import Progress
from producers.publisher import Publisher
from schemas.commands import GrantCommand
from schemas.kinds import GRANT
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

BENCH_PROJECT = 90001

# The statuses a purchase ends in; the bench waits for one per purchase.
FINAL = ("granted", "rejected", "failed", "in_doubt")

Say = Callable[..., None]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the full stack on a generated feed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--purchases", type=int, default=50_000, help="distinct purchases (default 50,000)")
    p.add_argument("--duplicates", type=float, default=5.0, help="extra repeats, %% of purchases (default 5)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (`celery worker`), default 1")
    p.add_argument("--concurrency", type=int, default=4, help="pool processes per worker (default 4)")
    p.add_argument(
        "--latency-ms",
        "--backend-latency-ms",
        dest="latency_ms",
        type=int,
        default=0,
        help="sandbox latency per call (default 0)",
    )
    p.add_argument(
        "--live",
        type=float,
        metavar="RATE",
        help="live mode: publish RATE purchases per second, one publish() each, for --seconds",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="live mode: how long to publish (default 30)")
    p.add_argument(
        "--backlog",
        action="store_true",
        help="publish everything first, then start the workers (a drained backlog); reports peak worker memory",
    )
    p.add_argument(
        "--appendfsync",
        choices=["always", "everysec"],
        default="everysec",
        help="Redis AOF fsync policy (default everysec, as deploy/ runs it)",
    )
    p.add_argument(
        "--replica",
        action="store_true",
        help="give Redis a replica and confirm writes on it (GRANTS_REDIS_MIN_REPLICAS=1): what WAIT costs",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="write a PNG of grants/s and purchase -> outcome latency over the run, from the workers' /metrics "
        "(scraped every 0.25 s; the workers serve GRANTS_METRICS_PORT for it)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")
    p.set_defaults(run=run)


def generate(n: int, dup_pct: float, seed: int) -> list[GrantCommand]:
    """N distinct purchases plus repeats of earlier ones, in publishing order."""
    rng = random.Random(seed)
    skus = ["gem.pack.100", "gem.pack.500", "booster_mega_1", "skin-dragon", "battle_pass.s1"]
    ops = []
    for i in range(n):
        ops.append(
            GrantCommand(
                project_id=BENCH_PROJECT,
                operation={
                    "user": {"id": f"player-{rng.randrange(5000)}"},
                    "items": [{"sku": rng.choice(skus), "quantity": rng.choice((1, 1, 2, 5))}],
                    "purchase": {
                        "amount": "4.99",
                        "currency": "USD",
                        "external_purchase_id": f"bench-{i}",
                        "external_purchase_date": "2026-11-21T12:00:00+00:00",
                    },
                },
            )
        )
    for _ in range(int(n * dup_pct / 100)):
        j = rng.randrange(n)
        ops.insert(min(len(ops), j + rng.randrange(1, 500)), ops[j])
    return ops


class PeakMemory:
    """Samples the resident memory of worker process trees in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_per_process_mb = 0.0
        self.peak_total_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pids: list[int]) -> None:
        def sample() -> None:
            while not self._stop.wait(self.interval):
                sizes = []
                for pid in pids:
                    try:
                        root = psutil.Process(pid)
                        sizes += [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
                    except psutil.Error:
                        continue
                if sizes:
                    self.peak_per_process_mb = max(self.peak_per_process_mb, round(max(sizes) / 2**20, 1))
                    self.peak_total_mb = max(self.peak_total_mb, round(sum(sizes) / 2**20, 1))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


class Plotting:
    """With --plot: the workers serve /metrics, a sampler scrapes them during
    the run, and the PNG is written at its end (without --plot: nothing)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.urls: list[str] = []
        self.sampler: metricsview.Sampler | None = None

    def worker_env(self) -> dict[str, str]:
        if self.path is None:
            return {}
        port = free_port()
        self.urls.append(f"http://127.0.0.1:{port}/metrics")
        return {"GRANTS_METRICS_PORT": str(port)}

    def start(self) -> None:
        if self.path is not None:
            self.sampler = metricsview.Sampler(self.urls, interval=0.25).start()

    def finish(self, title: str, say: Say) -> None:
        if self.sampler is None or self.path is None:
            return
        scrapes = self.sampler.stop()
        png = metricsview.plot(scrapes, self.path, title, project=str(BENCH_PROJECT))
        say(f"  plot: {png}" if png else "  plot: not written (the run was shorter than two scrapes)")


def start_redis(stack: Stack, args: argparse.Namespace, settings: Settings) -> Settings:
    """The stack's Redis (and, with --replica, a replica every write that
    must survive a failover waits for); returns the bench's settings."""
    primary = stack.start_redis(appendfsync=args.appendfsync)
    if not args.replica:
        return settings
    replica = RedisServer(stack.workdir, appendfsync=args.appendfsync, replica_of=primary.port).start()
    stack.replicas.append(replica)
    wait_until(replica.in_sync, 30, "the replica in sync")
    stack.settings_env["GRANTS_REDIS_MIN_REPLICAS"] = "1"
    return settings.model_copy(update={"redis_min_replicas": 1})


def sayer(json_report: bool) -> Say:
    """Where the bench's lines go: stderr when the report is JSON on stdout."""
    if json_report:
        return lambda *a: print(*a, file=sys.stderr, flush=True)
    return lambda *a: print(*a, flush=True)


def start_workers(stack: Stack, args: argparse.Namespace, plotting: Plotting, *, wait: bool) -> None:
    """args.workers workers of args.concurrency processes each (``wait``: until
    each is ready), serving /metrics when plotting."""
    for _ in range(args.workers):
        stack.start_worker(args.concurrency, wait, **plotting.worker_env())


def clients(stack: Stack, settings: Settings) -> tuple[Results, Publisher]:
    """The results store and a publisher, both on the stack's Redis."""
    redis_url = stack.redis_url
    results = Results(connect(redis_url), Keys(settings.key_prefix))
    publisher = Publisher(settings.model_copy(update={"redis_url": redis_url, "broker_url": None}))
    return results, publisher


def audit_check(stack: Stack, ids: Iterable[str]) -> dict[str, Any]:
    """The sandbox's audit against the purchases: applied exactly once each?"""
    audit = stack.audit_counts(BENCH_PROJECT)
    doubles = sum(1 for n in audit.values() if n > 1)
    missing = sum(1 for i in ids if i not in audit)
    return {"exactly_once": doubles == 0 and missing == 0, "doubles": doubles, "missing": missing}


def backend_calls(sandbox: dict[str, Any]) -> dict[str, Any]:
    """The calls the sandbox counted (its /sandbox/stats) and their mean batch size."""
    return {
        "backend_calls": sandbox["calls"],
        "mean_batch": round(sandbox["operations_processed"] / max(1, sandbox["calls"]), 1),
    }


def say_exactly_once(report: dict[str, Any], say: Say) -> None:
    """The report's last line: the audit's verdict."""
    say(
        f"  exactly once per sandbox audit: {'yes' if report['exactly_once'] else 'NO'} "
        f"(doubles {report['doubles']}, missing {report['missing']})"
    )


def finish(
    args: argparse.Namespace, report: dict[str, Any], say: Say, say_report: Callable[[dict[str, Any], Say], None]
) -> int:
    """Print the report (as JSON with --json, else by ``say_report``); 0 when
    every purchase was applied exactly once."""
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        say_report(report, say)
        say_exactly_once(report, say)
    return 0 if report["exactly_once"] else 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``grants bench``: the bulk mode, or the live one with --live."""
    if args.live:
        return run_live(args, settings)
    feed = generate(args.purchases, args.duplicates, args.seed)
    say = sayer(args.json)
    say(
        f"bench: {args.purchases:,} purchases + {len(feed) - args.purchases:,} repeats; "
        f"{args.workers} worker(s) x {args.concurrency} processes; sandbox latency {args.latency_ms} ms; "
        f"appendfsync {args.appendfsync}"
        + ("; a replica confirms every write (MIN_REPLICAS=1)" if args.replica else "")
    )
    plotting = Plotting(args.plot)
    with Stack(args.workdir) as stack:
        settings = start_redis(stack, args, settings)
        stack.start_sandbox("--latency-ms", str(args.latency_ms))
        if not args.backlog:
            start_workers(stack, args, plotting, wait=True)
            plotting.start()
        results, publisher = clients(stack, settings)
        started = time.monotonic()
        publish_all(publisher, feed)
        published_s = time.monotonic() - started
        memory = PeakMemory()
        if args.backlog:
            start_workers(stack, args, plotting, wait=False)
            started = time.monotonic()
            plotting.start()
        memory.watch([w.pid for w in stack.workers])
        counts = wait_for_outcomes(results, args.purchases, started)
        if counts is None:
            say("bench: gave up after 600 s")
            return 1
        wall_s = time.monotonic() - started
        memory.stop()
        plotting.finish(f"grants bench: {args.purchases:,} purchases", say)
        report = bulk_report(
            args, stack, results, counts, memory, published=len(feed), published_s=published_s, wall_s=wall_s
        )
    return finish(args, report, say, say_bulk_report)


def publish_all(publisher: Publisher, feed: list[GrantCommand]) -> None:
    """Publish the whole feed as fast as it goes, showing progress."""
    progress = Progress("published", total=len(feed))
    publisher.publish_many(feed, on_progress=progress.update)
    progress.done()


def outcomes_written(results: Results) -> int:
    """Grants that reached a final status, from the ledger's counts: one small
    hash read. (``stats()`` reads the outcome stream, lanes and batches too:
    polled during a run it took the cores being measured.)"""
    written = results.totals()[GRANT]
    return sum(written.get(s, 0) for s in FINAL)


def wait_for_outcomes(results: Results, purchases: int, started: float) -> dict[str, int] | None:
    """The outcome counts once every purchase has one; None after 600 s."""
    progress = Progress("outcomes", total=purchases)
    while True:
        done = outcomes_written(results)
        progress.update(done)
        if done >= purchases:
            break
        if time.monotonic() - started > 600:
            return None
        time.sleep(0.5)
    progress.done()
    return results.stats()["counts"]


def bulk_report(
    args: argparse.Namespace,
    stack: Stack,
    results: Results,
    counts: dict[str, int],
    memory: PeakMemory,
    *,
    published: int,
    published_s: float,
    wall_s: float,
) -> dict[str, Any]:
    """The bulk run's figures, from the records' timings and the sandbox
    (``published``: the commands published, repeats included)."""
    ids = [f"bench-{i}" for i in range(args.purchases)]
    timings = results.timings([(BENCH_PROJECT, i) for i in ids])
    latencies = [(cpl - enq) / 1000 for enq, _rcv, cpl in timings if enq and cpl]
    first_enq = min(t[0] for t in timings)
    last_cpl = max(t[2] for t in timings)
    first_cpl = min(t[2] for t in timings if t[2])
    # A backlog is timed from the workers' start: before that it was only queued.
    pipeline_s = wall_s if args.backlog else (last_cpl - first_enq) / 1000
    sandbox = stack.sandbox_get("/sandbox/stats")
    return {
        "purchases": args.purchases,
        "published_commands": published,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "publish_s": round(published_s, 2),
        "wall_s": round(wall_s, 2),
        "pipeline_s": round(pipeline_s, 2),
        "grants_per_s": round(args.purchases / pipeline_s),
        # First outcome to last: the pipeline's own pace, without start-up.
        "drain_grants_per_s": round(args.purchases / max(0.001, (last_cpl - first_cpl) / 1000)),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        **backend_calls(sandbox),
        "max_batch": sandbox["max_operations_per_call"],
        "outcomes": {s: counts[s] for s in FINAL},
        "duplicates_recorded": published - args.purchases,
        "peak_rss_mb_per_process": memory.peak_per_process_mb,
        "peak_rss_mb_all_workers": memory.peak_total_mb,
        "backlog": args.backlog,
        **audit_check(stack, ids),
    }


def say_bulk_report(report: dict[str, Any], say: Say) -> None:
    """The bulk report as lines (but its exactly-once verdict)."""
    say(f"  grants/s (first enqueue -> last outcome): {report['grants_per_s']:,}  ({report['pipeline_s']} s)")
    say(f"  first outcome -> last outcome: {report['drain_grants_per_s']:,} grants/s")
    say(f"  publish: {report['publish_s']} s for {report['published_commands']:,} commands")
    say(f"  latency enqueue->outcome: p50 {report['latency_p50_s']} s, p99 {report['latency_p99_s']} s")
    say(f"  backend calls: {report['backend_calls']:,}, mean batch {report['mean_batch']}, max {report['max_batch']}")
    say(f"  outcomes: {report['outcomes']}")
    say(
        f"  worker memory: peak {report['peak_rss_mb_per_process']} MB per process, "
        f"{report['peak_rss_mb_all_workers']} MB all worker processes together"
    )


def run_live(args: argparse.Namespace, settings: Settings) -> int:
    """Open-loop steady load: one publish() per purchase at args.live per second."""
    rate, seconds = args.live, args.seconds
    total = int(rate * seconds)
    feed = generate(total, 0.0, args.seed)
    say = sayer(args.json)
    say(
        f"bench --live: {rate:,.0f}/s for {seconds:g} s ({total:,} purchases, one publish() each); "
        f"{args.workers} worker(s) x {args.concurrency} processes; backend latency {args.latency_ms} ms"
    )
    plotting = Plotting(args.plot)
    with Stack(args.workdir) as stack:
        settings = start_redis(stack, args, settings)
        stack.start_sandbox("--latency-ms", str(args.latency_ms))
        start_workers(stack, args, plotting, wait=True)
        plotting.start()
        results, publisher = clients(stack, settings)
        schedule = publish_steadily(publisher, feed, rate)
        backlog_at_end = results.stats()["backlog"] + publisher.redis.xlen(publisher.stream)
        wait_until_final(results, total, timeout=120)
        applied = applied_times(stack)
        plotting.finish(f"grants bench --live {rate:,.0f}/s", say)
        latencies = [(applied[e] - due) * 1000 for e, due in schedule.due.items() if e in applied]
        report = {
            "offered_per_s": rate,
            "seconds": seconds,
            "purchases": total,
            "achieved_per_s": round(total / max(0.001, schedule.published_at - schedule.t0), 1),
            "latency_p50_ms": round(percentile(latencies, 50), 1),
            "latency_p99_ms": round(percentile(latencies, 99), 1),
            "latency_max_ms": round(max(latencies, default=0.0), 1),
            "backlog_when_publishing_stopped": backlog_at_end,
            **backend_calls(stack.sandbox_get("/sandbox/stats")),
            "backend_latency_ms": args.latency_ms,
            **audit_check(stack, schedule.due),
        }
    return finish(args, report, say, say_live_report)


@dataclass
class Schedule:
    """When each purchase was due (epoch seconds, by external purchase id),
    when publishing began (t0) and when it ended."""

    t0: float
    due: dict[str, float] = field(default_factory=dict)
    published_at: float = 0.0


def publish_steadily(publisher: Publisher, feed: list[GrantCommand], rate: float) -> Schedule:
    """Publish the feed one publish() each at ``rate`` per second, open loop:
    each purchase has its due time, and a publisher behind does not slow down."""
    schedule = Schedule(t0=time.time() + 0.2)
    progress = Progress("published", total=len(feed))
    for i, cmd in enumerate(feed):
        due = schedule.t0 + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        publisher.publish(cmd)
        schedule.due[cmd.external_purchase_id] = due
        if i % 200 == 0:
            progress.update(i)
    schedule.published_at = time.time()
    progress.done()
    return schedule


def wait_until_final(results: Results, total: int, timeout: float) -> None:
    """Wait (up to ``timeout`` s) until ``total`` purchases have an outcome."""
    deadline = time.monotonic() + timeout
    while outcomes_written(results) < total and time.monotonic() < deadline:
        time.sleep(0.1)


def applied_times(stack: Stack) -> dict[str, float]:
    """When the sandbox first applied each purchase, from its audit."""
    applied: dict[str, float] = {}
    after = 0
    while True:
        page = stack.sandbox_get("/sandbox/audit", project_id=BENCH_PROJECT, after_id=after, limit=100_000)
        for row in page["entries"]:
            applied.setdefault(row["external_purchase_id"], row["at"])
        if not page["entries"]:
            return applied
        after = page["next_after_id"]


def say_live_report(report: dict[str, Any], say: Say) -> None:
    """The live report as lines (but its exactly-once verdict)."""
    say(f"  achieved: {report['achieved_per_s']:,}/s of {report['offered_per_s']:,.0f}/s offered")
    say(
        f"  purchase -> applied: p50 {report['latency_p50_ms']} ms, p99 {report['latency_p99_ms']} ms, "
        f"max {report['latency_max_ms']} ms"
    )
    say(f"  backlog when publishing stopped: {report['backlog_when_publishing_stopped']:,}")
    say(f"  backend calls: {report['backend_calls']:,}, mean batch {report['mean_batch']}")
