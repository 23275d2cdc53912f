"""Prometheus metrics for `GET /metrics` (the text format, via prometheus-client).

    gator_requests_total{endpoint, status}           HTTP requests answered, by path and status code
    gator_prompt_tokens_total{model}                 prompt tokens prefilled
    gator_generation_tokens_total{model}             tokens generated
    gator_queue_length{model}                        requests waiting for a cache slot
    gator_running_requests{model}                    completions being decoded
    gator_generation_tokens_per_second{model}        generated tokens/s over the last 10 seconds
    gator_time_to_first_token_seconds{model}         histogram: submit -> first token

Each app has its own registry, so several servers (tests) can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gator.serve.models import ServedModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector:
    """Reads the engines' own counters at scrape time."""

    def __init__(self, models: Callable[[], list[ServedModel]]):
        self.models = models

    def collect(self) -> Iterator:
        families = {
            "prompt": CounterMetricFamily("gator_prompt_tokens", "Prompt tokens prefilled", labels=["model"]),
            "generated": CounterMetricFamily("gator_generation_tokens", "Tokens generated", labels=["model"]),
            "queue": GaugeMetricFamily("gator_queue_length", "Requests waiting for a cache slot", labels=["model"]),
            "running": GaugeMetricFamily("gator_running_requests", "Completions being decoded", labels=["model"]),
            "tps": GaugeMetricFamily("gator_generation_tokens_per_second",
                                     "Generated tokens per second over the last 10 s", labels=["model"]),
        }
        for m in self.models():
            e = m.engine
            families["prompt"].add_metric([m.name], e.prompt_tokens_total)
            families["generated"].add_metric([m.name], e.generated_tokens_total)
            families["queue"].add_metric([m.name], e.waiting)
            families["running"].add_metric([m.name], e.running)
            families["tps"].add_metric([m.name], e.tokens_per_second())
        yield from families.values()


class Metrics:
    def __init__(self, models: Callable[[], list[ServedModel]]):
        self.registry = CollectorRegistry()
        self.requests = Counter("gator_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.ttft = Histogram("gator_time_to_first_token_seconds", "Time from submit to the first token",
                              ["model"], registry=self.registry,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.registry.register(_EngineCollector(models))

    def render(self) -> bytes:
        return generate_latest(self.registry)
