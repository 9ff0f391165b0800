"""Prometheus metrics of `fragua serve`, per version, in a registry of their own (``/metrics``).

A canary is judged by comparing its versions' error rates, latencies and ratings with
production's, so every series carries the version that answered (``none`` before a model was
resolved, e.g. a 404 for an unknown model).
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fragua.serve.engine import EngineStats

NO_VERSION = "none"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class _Live(Collector):
    """Gauges read when scraped: the engine's queue and loaded versions, and where aliases route."""

    def __init__(self, engine_stats: Callable[[], EngineStats], routes: Callable[[], dict[str, str]]) -> None:
        self.engine_stats = engine_stats
        self.routes = routes

    def collect(self) -> Iterable[Metric]:
        stats = self.engine_stats()
        running = GaugeMetricFamily("fragua_serve_running_requests", "Requests being generated now.")
        running.add_metric([], stats.running)
        waiting = GaugeMetricFamily("fragua_serve_waiting_requests", "Requests waiting for a batch slot.")
        waiting.add_metric([], stats.waiting)
        loaded = GaugeMetricFamily("fragua_serve_loaded_version", "1 for each version loaded in the engine.", labels=["version"])
        for version in stats.loaded:
            loaded.add_metric([version], 1)
        routed = GaugeMetricFamily("fragua_serve_alias_version", "1 for the version each alias routes to.", labels=["alias", "version"])
        for alias, version in sorted(self.routes().items()):
            routed.add_metric([alias, version], 1)
        return [running, waiting, loaded, routed]


class ServeMetrics:
    def __init__(self, engine_stats: Callable[[], EngineStats], routes: Callable[[], dict[str, str]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fragua_serve_requests", "Requests answered, by version, endpoint and HTTP status.", ["version", "endpoint", "status"], registry=self.registry
        )
        self.errors = Counter(
            "fragua_serve_errors", "Requests that failed, by version, endpoint and error code.", ["version", "endpoint", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "fragua_serve_request_seconds", "Time from request to the answer's last token.", ["version", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.prompt_tokens = Counter("fragua_serve_prompt_tokens", "Prompt tokens read, by version.", ["version"], registry=self.registry)
        self.generated_tokens = Counter("fragua_serve_generated_tokens", "Tokens generated, by version.", ["version"], registry=self.registry)
        self.feedback = Counter("fragua_serve_feedback", "Feedback ratings received, by version and rating.", ["version", "rating"], registry=self.registry)
        self.corrections = Counter("fragua_serve_corrections", "Feedback that carried a correction, by version.", ["version"], registry=self.registry)
        self.load_failures = Counter("fragua_serve_load_failures", "Versions an alias moved to that could not be loaded.", ["version"], registry=self.registry)
        self.registry.register(_Live(engine_stats, routes))

    def answered(self, version: str, endpoint: str, status: int, latency_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.labels(version, endpoint, str(status)).inc()
        self.latency.labels(version, endpoint).observe(latency_s)
        self.prompt_tokens.labels(version).inc(prompt_tokens)
        self.generated_tokens.labels(version).inc(completion_tokens)

    def failed(self, version: str | None, endpoint: str, status: int, code: str | None) -> None:
        version = version or NO_VERSION
        self.requests.labels(version, endpoint, str(status)).inc()
        self.errors.labels(version, endpoint, code or str(status)).inc()

    def rated(self, version: str, rating: int, corrected: bool) -> None:
        self.feedback.labels(version, str(rating)).inc()
        if corrected:
            self.corrections.labels(version).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
