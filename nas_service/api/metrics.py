"""Prometheus metrics, hand-written (text exposition format 0.0.4, no client library).

Three kinds, each thread-safe: :class:`Counter` (only goes up), :class:`Gauge` (set to a value),
:class:`Histogram` (cumulative ``_bucket{le=...}``, ``_sum`` and ``_count``). Label values are
escaped as the format requires (backslash, double quote, newline).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

LabelValues = tuple[str, ...]
_INF = 'le="+Inf"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_format_value(v)}"
                                for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # per label values: (count per bucket (not cumulative), sum, count)
        self._values: dict[LabelValues, tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, n = self._values.get(key) or ([0] * len(self.buckets), 0.0, 0)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            self._values[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
        return entry[2] if entry else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._values.items())
        lines = self.header()
        for key, (counts, total, n) in items:
            cumulative = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                cumulative += c
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} "
                             f"{cumulative}")
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, _INF)} {n}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} "
                         f"{_format_value(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {n}")
        return lines


class ServiceMetrics:
    """The service's metrics; one instance per app."""

    def __init__(self) -> None:
        self.request_seconds = Histogram(
            "nas_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ("method", "route", "status"))
        self.unhandled_errors = Counter(
            "nas_http_unhandled_exceptions_total",
            "Requests that ended in an unexpected exception (answered 500).")
        self.architectures = Counter(
            "nas_architectures_total",
            "Architectures posted to the API, by whether the result came from the cache.",
            ("cached",))
        self.candidates = Counter(
            "nas_candidates_recorded_total",
            "Candidates recorded by this process's worker, by status.", ("status",))
        self.promotions = Counter(
            "nas_candidates_promoted_total",
            "Candidates of multi-fidelity jobs scored again at a higher rung by this process's "
            "worker, by that rung.", ("rung",))
        self.ghn_seconds = Histogram(
            "nas_scoring_seconds", "Time to predict parameters and score one architecture.",
            ())
        self.scoring_batches = Histogram(
            "nas_scoring_batch_architectures",
            "Architectures the API's scoring processes predicted in one GHN forward pass.",
            (), buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.scoring_busy = Counter(
            "nas_scoring_refused_total",
            "Cache misses the API refused (503), by why: the queue was full (busy) or no "
            "scoring process could score them (unavailable).", ("reason",))
        self.heartbeats = Counter(
            "nas_worker_heartbeats_total",
            "Lease renewals by this process's worker, by whether the lease was still held.",
            ("held",))
        self.last_heartbeat = Gauge(
            "nas_worker_last_heartbeat_timestamp_seconds",
            "Unix time of this process's worker's last lease renewal.")
        self.jobs_finished = Counter(
            "nas_worker_jobs_total", "Jobs this process's worker ran, by outcome.", ("outcome",))
        self.worker_restarts = Counter(
            "nas_worker_restarts_total",
            "Times this process's worker process was started again, by why: stuck in scoring, "
            "crashed, or it could not start.", ("reason",))
        # Set at scrape time from the database.
        self.queue_depth = Gauge("nas_queue_depth", "Search jobs waiting for a worker.")
        self.jobs = Gauge("nas_search_jobs", "Search jobs in the database, by status.",
                          ("status",))
        self.database_up = Gauge("nas_database_up",
                                 "1 when the last scrape could read the database.")

    def all(self) -> list[_Metric]:
        return [self.request_seconds, self.unhandled_errors, self.architectures, self.candidates,
                self.promotions, self.ghn_seconds, self.scoring_batches, self.scoring_busy,
                self.heartbeats, self.last_heartbeat, self.jobs_finished,
                self.worker_restarts, self.queue_depth, self.jobs, self.database_up]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
