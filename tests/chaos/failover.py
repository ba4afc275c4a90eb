"""The failover rig: the Redis primary lost while a replica lags, mid-run.

Real parts only: a primary, one replica and three sentinels (redis-server in
``--sentinel`` mode), two ``celery -A worker worker`` processes and the
sandbox in its non-idempotent mode, every process finding the primary through
the sentinels. One producer publishes a live feed one purchase at a time,
repeats included, and keeps the ids whose publish returned (acknowledged).

On loopback replication is instant, so the replica is made to lag for real:
it is stopped (SIGSTOP); the primary, which drops a replica silent for
``repl-timeout`` seconds, goes on taking writes the replica never sees; the
primary is SIGKILLed; the replica is continued (SIGCONT) and the sentinels
promote it; the old primary comes back and is made a replica of the new one.

Then the audit, from the sandbox's record of what it applied and the results
store: no purchase applied twice; every acknowledged purchase granted, or
in_doubt within a bound (the calls on the wire when the replica stopped:
their outcomes were written where only the lost primary had them).

With ``GRANTS_REDIS_MIN_REPLICAS=1`` that holds. With ``0`` acknowledged
publishes are lost (``lost > 0``): the rig proves it makes the divergence the
setting guards against.

    python -m tests.chaos.failover                    # both settings (make chaos)
    python -m tests.chaos.failover --min-replicas 1
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.localstack import REPO_ROOT, Stack, StackError, wait_until
from producers.publisher import Publisher, PublishFailed
from schemas.commands import GrantCommand
from tests.helpers import operation
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings

PROJECT = 78001
BATCH = 10
WORKERS = 2
CONCURRENCY = 2

RIG_ENV = {
    "GRANTS_BATCH_SIZE": str(BATCH),
    "GRANTS_HTTP_READ_TIMEOUT_S": "2",
    "GRANTS_HTTP_CONNECT_TIMEOUT_S": "1",
    "GRANTS_HTTP_WRITE_TIMEOUT_S": "1",
    "GRANTS_RETRY_BASE_S": "0.3",
    "GRANTS_RETRY_MAX_BACKOFF_S": "3",
    "GRANTS_RETRY_MAX_ATTEMPTS": "12",
    "GRANTS_DISPATCH_LEASE_S": "3",
    "GRANTS_VISIBILITY_TIMEOUT_S": "10",
    "GRANTS_REDIS_REPLICA_TIMEOUT_MS": "500",
}
# The primary drops a replica that has not acknowledged for 2 s (it pings
# them every second): a stopped replica is cut off, not buffered for.
REPLICATION = ("--repl-ping-replica-period", "1", "--repl-timeout", "2")
STOP_S = 5.0  # how long the replica is stopped before the primary dies


@dataclass
class Report:
    min_replicas: int
    purchases: int
    published: int = 0
    publish_failures: int = 0
    acknowledged: int = 0
    doubles: int = 0
    lost: int = 0
    granted: int = 0
    in_doubt: int = 0
    failed: int = 0
    in_doubt_bound: int = WORKERS * CONCURRENCY * BATCH
    promoted: bool = False
    workers_alive: int = 0
    events: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        if not self.promoted or self.workers_alive < WORKERS:
            return False
        if self.min_replicas == 0:
            return self.lost > 0  # the rig made the divergence
        return self.doubles == 0 and self.lost == 0 and self.in_doubt <= self.in_doubt_bound

    def line(self) -> str:
        return (
            f"failover: min_replicas={self.min_replicas} purchases={self.purchases} published={self.published} "
            f"acknowledged={self.acknowledged} publish_failures={self.publish_failures} doubles={self.doubles} "
            f"lost={self.lost} granted={self.granted} failed={self.failed} in_doubt={self.in_doubt} "
            f"(bound {self.in_doubt_bound}) promoted={self.promoted} workers_alive={self.workers_alive} elapsed={self.elapsed_s:.0f}s "
            f"{'OK' if self.ok else 'FAILED'}"
        )


def feed(purchases: int, repeats_pct: float, seed: int) -> list[str]:
    """Purchase ids in publishing order, repeats scattered through."""
    rng = random.Random(seed)
    order = [f"fo-{i}" for i in range(purchases)]
    for _ in range(int(purchases * repeats_pct / 100)):
        order.insert(rng.randrange(len(order) + 1), order[rng.randrange(purchases)])
    return order


class Failover:
    def __init__(self, workdir: Path, *, min_replicas: int, purchases: int = 3000, rate: float = 200.0, say=print):
        self.min_replicas = min_replicas
        self.rate = rate
        self.say = say
        self.order = feed(purchases, 20, seed=min_replicas + 7)
        env = {**RIG_ENV, "GRANTS_REDIS_MIN_REPLICAS": str(min_replicas)}
        self.stack = Stack(workdir, idempotent_backend=False, settings_env=env)
        self.report = Report(min_replicas=min_replicas, purchases=purchases)
        self.acknowledged: set[str] = set()
        self.progress = 0  # publishes done, for the chaos thread's timing

    def settings(self) -> Settings:
        env = self.stack.env()
        return Settings(
            redis_url=env["GRANTS_REDIS_URL"],
            redis_sentinels=env["GRANTS_REDIS_SENTINELS"],
            redis_sentinel_master=env["GRANTS_REDIS_SENTINEL_MASTER"],
            redis_min_replicas=self.min_replicas,
            redis_replica_timeout_ms=int(RIG_ENV["GRANTS_REDIS_REPLICA_TIMEOUT_MS"]),
        )

    def produce(self) -> None:
        """One purchase at a time at the rate; a failed publish is retried
        (the purchase pipeline's contract), its id acknowledged once it returns."""
        publisher = Publisher(self.settings())
        started = time.monotonic()
        for n, purchase_id in enumerate(self.order):
            command = GrantCommand(project_id=PROJECT, operation=operation(purchase_id, user=f"p-{n % 97}"))
            while True:
                try:
                    publisher.publish(command)
                    break
                except PublishFailed:
                    self.report.publish_failures += 1
                    time.sleep(0.05)
            self.acknowledged.add(purchase_id)
            self.progress = n + 1
            time.sleep(max(0.0, started + (n + 1) / self.rate - time.monotonic()))
        self.report.published = len(self.order)
        publisher.close()

    def lose_the_primary(self) -> None:
        """Stop the replica, kill the primary, continue the replica, wait for
        its promotion, bring the old primary back as a replica."""
        stack = self.stack
        wait_until(lambda: self.progress >= len(self.order) // 3, 120, "a third of the feed published")
        primary, replica = stack.redis, stack.replicas[0]
        assert primary is not None
        self.event(f"SIGSTOP replica :{replica.port}")
        replica.signal_group(signal.SIGSTOP)
        time.sleep(STOP_S)
        self.event(f"SIGKILL primary :{primary.port}")
        primary.kill()
        replica.signal_group(signal.SIGCONT)
        self.event("SIGCONT replica")
        wait_until(lambda: stack.current_primary() is replica, 60, "the sentinels to promote the replica", 0.2)
        self.report.promoted = True
        self.event(f"replica :{replica.port} promoted")
        primary.start()  # its AOF holds the lost writes; it is made a replica and resynced
        try:
            wait_until(primary.in_sync, 45, "the sentinels to make the old primary a replica", 0.2)
        except StackError:
            # On a loaded machine the sentinels can be slow to reconfigure a
            # returning primary; an operator would do it by hand (the audit
            # is what the rig is about, not the sentinels' speed).
            self.event("sentinels slow to convert the old primary: REPLICAOF by hand")
            primary.client().replicaof("127.0.0.1", replica.port)
            wait_until(primary.in_sync, 60, "the old primary to rejoin as a replica", 0.2)
        self.event(f"old primary :{primary.port} rejoined as a replica")

    def event(self, what: str) -> None:
        self.report.events.append(what)
        self.say(f"failover: {what} (published {self.progress})")

    def run(self) -> Report:
        started = time.monotonic()
        stack = self.stack
        stack.start_redis_ha(replicas=1, sentinels=3, extra=REPLICATION)
        stack.start_sandbox()
        stack.sandbox_put("/sandbox/faults", {"latency_ms": 30})  # calls on the wire when it happens
        for _ in range(WORKERS):
            stack.start_worker(concurrency=CONCURRENCY)
        producer = threading.Thread(target=self.produce)
        producer.start()
        try:
            self.lose_the_primary()
        finally:
            producer.join()
        self.audit(Results(self.settings().redis_client(), Keys()))
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def audit(self, results: Results) -> None:
        r = self.report
        r.acknowledged = len(self.acknowledged)
        r.workers_alive = sum(w.alive() for w in self.stack.workers)
        final = ("granted", "failed", "in_doubt", "rejected")

        def statuses() -> dict[str, str | None]:
            return {i: (results.get(PROJECT, i) or {}).get("status") for i in self.acknowledged}

        # Settled: every acknowledged purchase final, or (with lost ones) no
        # change for long enough that leases ran out and the sweeper spoke.
        seen, quiet_since = None, time.monotonic()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            now = statuses()
            if all(s in final for s in now.values()):
                break
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since > 20:
                break
            time.sleep(1)
        now = statuses()
        counts = self.stack.audit_counts(PROJECT)
        r.doubles = sum(1 for n in counts.values() if n > 1)
        r.lost = sum(1 for s in now.values() if s not in final)
        r.granted = sum(1 for i, s in now.items() if s == "granted" and counts.get(i) == 1)
        r.in_doubt = sum(1 for s in now.values() if s == "in_doubt")
        r.failed = sum(1 for s in now.values() if s in ("failed", "rejected"))


def run_once(workdir: Path, min_replicas: int, purchases: int, say=print) -> Report:
    shutil.rmtree(workdir, ignore_errors=True)
    rig = Failover(workdir, min_replicas=min_replicas, purchases=purchases, say=say)
    try:
        return rig.run()
    finally:
        rig.stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.failover", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--min-replicas", type=int, choices=(0, 1), action="append", help="default: 1, then 0")
    parser.add_argument("--purchases", type=int, default=3000)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "var" / "failover")
    args = parser.parse_args(argv)
    failures = 0
    for n in args.min_replicas or (1, 0):
        report = run_once(args.workdir / f"min-replicas-{n}", n, args.purchases)
        print(report.line(), flush=True)
        failures += not report.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
