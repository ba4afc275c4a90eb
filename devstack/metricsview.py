"""What the demo and the bench read from the workers' ``/metrics``: a scrape
summed over workers (what Prometheus' ``sum()`` sees), quantiles from a
histogram's buckets (as ``histogram_quantile`` estimates them), a sampler
that scrapes during a run, and the PNG plot of grants/s and purchase ->
outcome latency over it.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]

OUTCOMES = "grants_outcomes_total"
RECEIVED = "grants_commands_received_total"
LATENCY = "grants_purchase_to_outcome_seconds"


@dataclass
class Scrape:
    """Every sample of one or more workers' /metrics, added up."""

    at: float
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    @classmethod
    def of(cls, urls: Iterable[str], timeout: float = 5.0) -> Scrape:
        scrape = cls(time.time())
        for url in urls:
            text = httpx.get(url, timeout=timeout).text
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    scrape.samples[key] = scrape.samples.get(key, 0.0) + s.value
        return scrape

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name``'s samples matching ``labels``, added up per value of ``label``."""
        want = set(labels.items())
        out: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name and want <= set(ls):
                value = dict(ls).get(label, "")
                out[value] = out.get(value, 0.0) + v
        return out

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (upper bound, count), added up over
        the series matching ``labels``."""
        per_le = self.by(f"{name}_bucket", "le", **labels)
        return sorted((float(le), n) for le, n in per_le.items())


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly within the
    bucket it falls in (Prometheus' histogram_quantile); None without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):  # in the open-ended bucket: its lower bound
                return lower_le
            if n == lower_n:
                return le
            return lower_le + (le - lower_le) * (rank - lower_n) / (n - lower_n)
        lower_le, lower_n = le, n
    return lower_le


def difference(later: list[tuple[float, float]], earlier: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Buckets of what happened between two scrapes."""
    before = dict(earlier)
    return [(le, n - before.get(le, 0.0)) for le, n in later]


class Sampler:
    """Scrapes the workers every ``interval`` seconds in a thread, for the plot."""

    def __init__(self, urls: list[str], interval: float = 0.5):
        self.urls = urls
        self.interval = interval
        self.scrapes: list[Scrape] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sampler:
        def loop() -> None:
            while True:
                try:
                    self.scrapes.append(Scrape.of(self.urls))
                except Exception as exc:  # a worker restarting: the next scrape has it
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Scrape]:
        """Stop, with one last scrape: the series ends when the run does."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.scrapes.append(Scrape.of(self.urls))
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        return self.scrapes


def plot(scrapes: list[Scrape], path: Path, title: str, **labels: str) -> Path | None:
    """A PNG: outcomes per second by status, and purchase -> outcome latency
    (p50, p99 of each interval), over the run; None with fewer than two scrapes."""
    if len(scrapes) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = scrapes[0].at
    times: list[float] = []
    rates: dict[str, list[float]] = {}
    p50: list[float | None] = []
    p99: list[float | None] = []
    statuses = sorted({s for sc in scrapes for s in sc.by(OUTCOMES, "status", **labels)})
    for before, after in itertools.pairwise(scrapes):
        dt = max(1e-3, after.at - before.at)
        times.append(after.at - t0)
        b, a = before.by(OUTCOMES, "status", **labels), after.by(OUTCOMES, "status", **labels)
        for status in statuses:
            rates.setdefault(status, []).append(max(0.0, a.get(status, 0.0) - b.get(status, 0.0)) / dt)
        window = difference(after.buckets(LATENCY, **labels), before.buckets(LATENCY, **labels))
        p50.append(quantile(window, 0.5))
        p99.append(quantile(window, 0.99))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for status, values in rates.items():
        top.plot(times, values, marker=".", label=status)
    top.set_ylabel("outcomes / s")
    top.set_title(title)
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    for name, quantiles in (("p50", p50), ("p99", p99)):
        bottom.plot(times, [math.nan if v is None else v for v in quantiles], marker=".", label=name)
    bottom.set_ylabel("purchase -> outcome (s)")
    bottom.set_xlabel("seconds into the run")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
