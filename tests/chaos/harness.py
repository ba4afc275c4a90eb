"""The chaos run: everything going wrong at once, then an audit.

Real parts only: a private redis-server with AOF, real `celery -A worker
worker` processes, the sandbox in its non-idempotent mode, and two `grants
publish` processes publishing the same feed at the same time. While they run:

- worker process groups are SIGKILLed (main process and pool children), and
  single pool children too, then replaced, also while calls are on the wire;
- Redis is shut down and started again;
- the backend answers a share of 503s, 429s with Retry-After, applies some
  calls and drops the connection without an answer, has latency spikes, and
  goes down completely for a while (every call 503).

Then it checks, from the sandbox's audit and the results store: no purchase
granted twice; every purchase granted, failed or in_doubt (none unaccounted);
no failed purchase applied; every granted one applied exactly once; the
counts of `grants results stats` agree with the audit; in_doubt only as many
as calls were cut. It prints one summary line.

    python -m tests.chaos.harness               # the full run (make chaos)
    python -m tests.chaos.harness --short       # what `make test` runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devstack.localstack import REPO_ROOT, Stack, wait_until
from tests.helpers import operation
from worker.keys import Keys
from worker.results import Results
from worker.settings import connect

PROJECT = 77001

# Production-shaped retry settings (so the outage is ridden out by backoff,
# not by luck), with test-sized leases so a killed worker's batch is
# recovered in seconds.
CHAOS_ENV = {
    "GRANTS_RETRY_BASE_S": "0.5",
    "GRANTS_RETRY_MAX_BACKOFF_S": "15",
    "GRANTS_RETRY_MAX_ATTEMPTS": "12",
    "GRANTS_HTTP_READ_TIMEOUT_S": "2",
    "GRANTS_HTTP_CONNECT_TIMEOUT_S": "1",
    "GRANTS_HTTP_WRITE_TIMEOUT_S": "1",
    "GRANTS_DISPATCH_LEASE_S": "3",
    "GRANTS_VISIBILITY_TIMEOUT_S": "10",
    "GRANTS_PUBLISH_CHUNK_SIZE": "200",
    # Small batches and a slow backend stretch the run so that the kills, the
    # restart and the outage land while calls are on the wire, not after.
    "GRANTS_BATCH_SIZE": str(10),
}
CHAOS_BATCH = 10


@dataclass
class Plan:
    purchases: int
    repeats_pct: float
    workers: int
    kills: int
    child_kills: int
    redis_restarts: int
    outage_s: float
    rate_5xx: float = 0.05
    rate_429: float = 0.05
    rate_drop: float = 0.01
    latency_ms: int = 200
    seed: int = 1


SHORT = Plan(purchases=2000, repeats_pct=20, workers=2, kills=2, child_kills=1, redis_restarts=1, outage_s=6)
FULL = Plan(purchases=6000, repeats_pct=20, workers=2, kills=5, child_kills=3, redis_restarts=2, outage_s=30)


@dataclass
class Report:
    purchases: int
    kills: int = 0
    child_kills: int = 0
    redis_restarts: int = 0
    producer_reruns: int = 0
    faults: dict = field(default_factory=dict)
    doubles: int = 0
    unaccounted: int = 0
    granted: int = 0
    failed: int = 0
    in_doubt: int = 0
    failed_but_applied: int = 0
    granted_not_applied: int = 0
    stats_mismatch: str = ""
    in_doubt_bound: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.faults.get("outage", 0) > 0
            and self.doubles == 0
            and self.unaccounted == 0
            and self.failed_but_applied == 0
            and self.granted_not_applied == 0
            and not self.stats_mismatch
            and self.in_doubt <= self.in_doubt_bound
        )

    def line(self) -> str:
        return (
            f"chaos: purchases={self.purchases} kills={self.kills}+{self.child_kills} children "
            f"redis_restarts={self.redis_restarts} producer_reruns={self.producer_reruns} "
            f"faults={json.dumps(self.faults, separators=(',', ':'))} doubles={self.doubles} "
            f"unaccounted={self.unaccounted} granted={self.granted} failed={self.failed} "
            f"in_doubt={self.in_doubt} (bound {self.in_doubt_bound}) "
            f"elapsed={self.elapsed_s:.0f}s {'OK' if self.ok else 'FAILED'}"
        )


def write_feed(path: Path, plan: Plan) -> list[str]:
    """The purchases, each once, plus repeats scattered through the feed."""
    rng = random.Random(plan.seed)
    ids = [f"ch-{i}" for i in range(plan.purchases)]
    lines = [json.dumps(operation(i, user=f"player-{rng.randrange(300)}", quantity=rng.choice((1, 2, 5)))) for i in ids]
    for _ in range(int(plan.purchases * plan.repeats_pct / 100)):
        j = rng.randrange(plan.purchases)
        lines.insert(rng.randrange(len(lines) + 1), lines[j])
    path.write_text("\n".join(lines) + "\n")
    return ids


class Chaos:
    def __init__(self, plan: Plan, workdir: Path, say=print):
        self.plan = plan
        self.say = say
        self.rng = random.Random(plan.seed)
        self.stack = Stack(workdir, idempotent_backend=False, settings_env=dict(CHAOS_ENV))
        self.report = Report(purchases=plan.purchases)
        self.done = threading.Event()
        self.outage_ends = 0.0

    # --- faults ----------------------------------------------------------

    def faults(self, **extra) -> None:
        # Every change reseeds the sandbox's dice: a new seed each time, or the
        # same short run of draws repeats and some faults never come up.
        p = self.plan
        self._fault_changes = getattr(self, "_fault_changes", 0) + 1
        self.stack.sandbox_put(
            "/sandbox/faults",
            {
                "rate_5xx": p.rate_5xx,
                "rate_429": p.rate_429,
                "retry_after_s": 1,
                "rate_drop": p.rate_drop,
                "latency_ms": p.latency_ms,
                "seed": p.seed * 1000 + self._fault_changes,
                **extra,
            },
        )

    def kill_worker(self) -> None:
        victim = self.rng.choice([w for w in self.stack.workers if w.alive()])
        victim.kill()
        self.stack.workers.remove(victim)
        self.report.kills += 1
        self.stack.start_worker(concurrency=2, wait=False)

    def kill_child(self) -> None:
        worker = self.rng.choice([w for w in self.stack.workers if w.alive()])
        try:
            children = psutil.Process(worker.pid).children()
        except psutil.NoSuchProcess:
            return
        if children:
            os.kill(self.rng.choice(children).pid, signal.SIGKILL)
            self.report.child_kills += 1

    def restart_redis(self) -> None:
        self.stack.restart_redis(down_s=2)
        self.report.redis_restarts += 1

    # --- the run -----------------------------------------------------------

    def publish(self, feed: Path) -> None:
        """Two producers, same feed, same time; a producer that fails is run again."""

        def producer(n: int) -> None:
            for _attempt in range(10):
                out = subprocess.run(
                    [sys.executable, "-m", "ops", "publish", "--project-id", str(PROJECT), str(feed)],
                    env=self.stack.env(),
                    cwd=REPO_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if out.returncode == 0:
                    return
                # Failed loudly (non-zero exit, reason on stderr); publishing again is safe.
                self.report.producer_reruns += 1
                self.say(f"producer {n} exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}; again")
                time.sleep(1)
            raise RuntimeError(f"producer {n} kept failing")

        threads = [threading.Thread(target=producer, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        self.producers = threads

    def mayhem(self) -> None:
        """Kills, restarts, spikes and the outage, spread over the run."""
        p = self.plan
        events = ["kill"] * p.kills + ["child"] * p.child_kills + ["redis"] * p.redis_restarts + ["spike"] * 2
        self.rng.shuffle(events)
        # The outage goes second: it must meet calls, not an idle pipeline.
        events.insert(1, "outage")
        for event in events:
            if self.done.wait(self.rng.uniform(0.5, 2.5)):
                return
            self.say(f"chaos: {event}")
            if event == "kill":
                self.kill_worker()
            elif event == "child":
                self.kill_child()
            elif event == "redis":
                self.restart_redis()
            elif event == "spike":
                # Changing the faults ends an outage: let it run its course first.
                self.done.wait(max(0.0, self.outage_ends - time.monotonic()))
                self.faults(latency_ms=1500)  # under the 2 s read timeout: slow, not lost
                time.sleep(2)
                self.faults()
            elif event == "outage":
                self.outage_ends = time.monotonic() + p.outage_s
                self.faults(script=[{"action": "outage", "seconds": p.outage_s}])

    def run(self) -> Report:
        started = time.monotonic()
        stack = self.stack
        stack.start_redis()
        stack.start_sandbox()
        self.faults()
        for _ in range(self.plan.workers):
            stack.start_worker(concurrency=2)
        ids = write_feed(stack.workdir / "feed.jsonl", self.plan)
        self.publish(stack.workdir / "feed.jsonl")
        chaos = threading.Thread(target=self.mayhem)
        chaos.start()
        for t in self.producers:
            t.join()
        chaos.join()
        self.faults(rate_5xx=0, rate_429=0, rate_drop=0)  # let the tail finish
        results = Results(connect(stack.redis.url), Keys())
        final = {"granted", "failed", "in_doubt", "rejected"}

        def settled():
            counts = results.stats()["counts"]
            return sum(counts[s] for s in final) >= len(ids)

        try:
            wait_until(settled, 240, "every purchase to reach an outcome", interval=0.5)
        except Exception as exc:  # reported as unaccounted below
            self.say(f"chaos: {exc}")
        self.done.set()
        self.audit(results, ids)
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def audit(self, results: Results, ids: list[str]) -> None:
        r = self.report
        counts = self.stack.audit_counts(PROJECT)
        status = {}
        for i in ids:
            record = results.get(PROJECT, i)
            status[i] = record["status"] if record else None
        r.doubles = sum(1 for n in counts.values() if n > 1)
        r.unaccounted = sum(1 for s in status.values() if s not in ("granted", "failed", "in_doubt"))
        r.granted = sum(1 for s in status.values() if s == "granted")
        r.failed = sum(1 for s in status.values() if s == "failed")
        r.in_doubt = sum(1 for s in status.values() if s == "in_doubt")
        r.failed_but_applied = sum(1 for i, s in status.items() if s == "failed" and counts.get(i))
        r.granted_not_applied = sum(1 for i, s in status.items() if s == "granted" and counts.get(i) != 1)
        stats = results.stats()["counts"]
        applied_granted = sum(1 for i, s in status.items() if s == "granted" and counts.get(i) == 1)
        if stats["granted"] != applied_granted:
            r.stats_mismatch = f"stats say {stats['granted']} granted, the audit confirms {applied_granted}"
        sandbox = self.stack.sandbox_get("/sandbox/stats")
        r.faults = {"calls": sandbox["calls"], **{k: v for k, v in sandbox["faults"].items() if v}}
        # A command may be in doubt only if its call was cut: a dropped answer,
        # or a worker killed during the call (a pool process holds one call).
        cut_calls = sandbox["faults"].get("drop", 0) + (r.kills + r.child_kills) * 2
        r.in_doubt_bound = cut_calls * CHAOS_BATCH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="the short form `make test` runs")
    parser.add_argument("--runs", type=int, default=1, help="run the whole thing this many times")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "var" / "chaos")
    args = parser.parse_args(argv)
    plan = SHORT if args.short else FULL
    failures = 0
    for n in range(args.runs):
        workdir = args.workdir / f"run-{n + 1}"
        # A clean slate: the sandbox's audit of an earlier run would count as doubles.
        shutil.rmtree(workdir, ignore_errors=True)
        plan_n = Plan(**{**plan.__dict__, "seed": plan.seed + n})
        chaos = Chaos(plan_n, workdir)
        try:
            report = chaos.run()
        finally:
            chaos.stack.stop()
        print(report.line(), flush=True)
        failures += not report.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
