"""`/metrics` in Prometheus format (prometheus_client), one registry per app.

A registry per app rather than prometheus_client's global one: two apps in one process
(as in tests) must not share or collide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Reading = tuple[str, str, Callable[[], float]]  # kind ("gauge" | "counter"), help, read


class StateCollector(Collector):
    """Reads gauges and counters from live objects at scrape time."""

    def __init__(self, readings: dict[str, Reading]) -> None:
        self._readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, (kind, help_text, read) in self._readings.items():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, help_text, value=read())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.operations = Histogram(
            "inventory_graphql_operation_seconds",
            "GraphQL operations by root field and type, with their duration",
            ["field", "type"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.operation_errors = Counter(
            "inventory_graphql_operation_errors",
            "GraphQL operations answered with errors, by root field and type",
            ["field", "type"],
            registry=self.registry,
        )
        self.reservations = Counter(
            "inventory_reservations",
            "reserve answers by outcome (Reservation, InsufficientStock, ...)",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "inventory_reservation_batch_size",
            "reserve requests per coalesced transaction",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self._collector: StateCollector | None = None

    def watch(self, readings: dict[str, Reading]) -> None:
        """Read these live values at every scrape (until `unwatch`)."""
        self._collector = StateCollector(readings)
        self.registry.register(self._collector)

    def unwatch(self) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None

    def endpoint(
        self, allowed: Callable[[Request], bool] | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """The scrape endpoint; with `allowed`, only for the requests it allows."""

        async def metrics(request: Request) -> Response:
            if allowed is not None and not allowed(request):
                return Response(
                    "This needs the metrics token: send `Authorization: Bearer "
                    "<INVENTORY_METRICS_TOKEN>`.\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="text/plain",
                )
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)

        return metrics
