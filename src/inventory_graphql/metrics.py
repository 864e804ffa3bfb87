"""`/metrics` in Prometheus format, read from the live objects of one app.

A registry per app rather than prometheus_client's global one: two apps in one process
(as in tests) must not share or collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StateCollector(Collector):
    """Reads gauges and counters from objects at scrape time."""

    def __init__(self, readings: dict[str, tuple[str, str, Callable[[], float]]]) -> None:
        self._readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, (kind, help_text, read) in self._readings.items():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, help_text, value=read())


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Response]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return metrics
