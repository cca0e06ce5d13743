"""Prometheus metrics written in the text exposition format (version 0.0.4) without a client library:
counters, gauges and histograms with labels, safe to update from any thread."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels.get(n, "")) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing number per label set."""

    kind = "counter"

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the series of `labels`."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of one series."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when scraped (from a callback), or set."""

    kind = "gauge"

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._callbacks: dict[tuple[str, ...], Callable[[], float]] = {}

    def set(self, value: float, **labels: str) -> None:
        """Set the series of `labels`."""
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def set_function(self, fn: Callable[[], float], **labels: str) -> None:
        """Read the series of `labels` from `fn()` at every scrape."""
        with self._lock:
            self._callbacks[self._key(labels)] = fn

    def render(self) -> list[str]:
        with self._lock:
            values = dict(self._values)
            callbacks = dict(self._callbacks)
        for k, fn in callbacks.items():
            values[k] = float(fn())
        rows = sorted(values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in rows]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        with self._lock:
            s = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
            s[-2] += value
            s[-1] += 1

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for key, s in items:
            for b, n in zip(self.buckets, s, strict=False):
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_num(n)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_num(s[-1])}")
        return out


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.requests = Counter("embedkit_http_requests_total", "HTTP requests answered.", ("route", "status"))
        self.latency = Histogram("embedkit_http_request_duration_seconds", "Time to answer a request (streams: "
                                 "to the last byte).", ("route",))
        self.tokens_in = Counter("embedkit_prompt_tokens_total", "Input tokens processed.", ("model",))
        self.tokens_out = Counter("embedkit_generated_tokens_total", "Tokens generated.", ("model",))
        self.embed_forwards = Counter("embedkit_embedding_forwards_total",
                                      "Forward passes the embedding model ran.", ("model",))
        self.embed_requests = Counter("embedkit_embedding_requests_total", "Embedding requests served.", ("model",))
        self.embed_batch_texts = Histogram("embedkit_embedding_batch_texts", "Texts per collected embedding batch.",
                                           ("model",), SIZE_BUCKETS)
        self.embed_batch_requests = Histogram("embedkit_embedding_batch_requests",
                                              "Requests merged into one collected embedding batch.", ("model",),
                                              SIZE_BUCKETS)
        self.queue_depth = Gauge("embedkit_queue_depth", "Requests waiting for the model.", ("model",))
        self.slots_busy = Gauge("embedkit_generation_slots_busy", "Generation slots in use.", ("model",))
        self.generations = Counter("embedkit_generations_total", "Generations by how they ended.",
                                   ("model", "outcome"))
        self.rejected = Counter("embedkit_rejected_total", "Requests refused because the queue was full.", ("model",))
        self.time_to_first_token = Histogram("embedkit_time_to_first_token_seconds",
                                             "From accepting a generation to its first token.", ("model",))
        self.generation_batch_sequences = Histogram("embedkit_generation_batch_sequences",
                                                    "Sequences decoded together in one generation forward.",
                                                    ("model",), SIZE_BUCKETS)
        self._all = [self.requests, self.latency, self.tokens_in, self.tokens_out, self.embed_forwards,
                     self.embed_requests, self.embed_batch_texts, self.embed_batch_requests, self.queue_depth,
                     self.slots_busy, self.generations, self.rejected, self.time_to_first_token,
                     self.generation_batch_sequences]

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        for m in self._all:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
