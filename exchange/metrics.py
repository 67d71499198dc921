"""Prometheus metrics of every process (node, Sequencer replica): the `/metrics` endpoint and the exchange's own
series, `exchange_*` (the gRPC ones are in exchange/grpc_metrics.py).

Rules: base units (seconds, entries, orders), counters end `_total`, labels of low cardinality only (market,
reason, kind, role, result; never an account, a key or an order id). What every order counts is a plain int,
reported at scrape time (exchange/node/metrics.py, `OrderCounts`); what is counted per call, per message or per
batch uses label children bound once and pays an increment or an observation each. Whatever a scrape can read
from the process's state (positions, lag, checksums, queue depths) is read at scrape time, on the event loop
(`LoopCollector`), and costs nothing between scrapes.

The endpoint is prometheus_client's HTTP server, in a thread of its own: a scrape never waits for the event loop
except for the values it reads on it, and then at most `LoopCollector.TIMEOUT_S` (it serves the last values read
if the loop is busy that long).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import time
from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exchange.shared.wire import split_host_port

# The Consul service meta key naming a process's metrics port (Prometheus's consul_sd_configs read it:
# deploy/prometheus/prometheus.yml).
METRICS_PORT_META = "metrics_port"

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free one); the "
                             "port is registered in Consul (service meta metrics_port). Default: no metrics")


def serve_metrics(listen: str) -> int:
    """Starts the `/metrics` endpoint on `listen` (a thread of its own); returns its port."""
    host, port = split_host_port(listen)
    prometheus_client.disable_created_metrics()  # no `_created` series: half the scrape, no use in alerts
    try:
        server, _ = prometheus_client.start_http_server(port, addr=host)
    except OSError as error:
        raise SystemExit(f"cannot serve metrics on {listen}: {error}") from error
    return int(server.server_port)


def metrics_meta(port: int | None) -> dict[str, str]:
    """The Consul service meta announcing a process's metrics port (empty without metrics)."""
    return {} if port is None else {METRICS_PORT_META: str(port)}


class LoopCollector(Collector):
    """Gauges read from the process's state on its event loop at scrape time (`gather` runs on the loop)."""

    TIMEOUT_S = 2.0

    def __init__(self, loop: asyncio.AbstractEventLoop, gather: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._loop = loop
        self._gather = gather
        self._last: list[GaugeMetricFamily] = []

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not run `gather` (it would wait for the loop that registers it)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        future: concurrent.futures.Future[list[GaugeMetricFamily]] = concurrent.futures.Future()

        def gather() -> None:
            try:
                future.set_result(list(self._gather()))
            except BaseException as error:  # noqa: BLE001 - handed to the scrape
                future.set_exception(error)

        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            gather()  # called on the loop itself (tests)
        else:
            try:
                self._loop.call_soon_threadsafe(gather)
            except RuntimeError:  # the loop has closed: the process is stopping
                return self._last
        with contextlib.suppress(concurrent.futures.TimeoutError):  # the loop is busy: the last values read
            self._last = future.result(self.TIMEOUT_S)
        return self._last


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


GC_PAUSE_SECONDS = Histogram(
    "exchange_gc_pause_seconds", "Pauses of Python's cyclic garbage collector, by generation (2: a full collection, "
    "which scans every long-lived object of the process).", ["generation"], buckets=SECONDS_BUCKETS)


def observe_gc_pauses() -> Callable[[str, dict], None]:
    """Times every collection of this process into GC_PAUSE_SECONDS (a collector callback, about a microsecond per
    collection); returns the callback, which `gc.callbacks.remove` takes off again."""
    generations = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]
    started = 0.0

    def note(phase: str, info: dict) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            generations[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(note)
    return note


# Open server streams by method: kept by the server interceptor (exchange/grpc_metrics.py).
STREAM_SUBSCRIBERS = Gauge("exchange_stream_subscribers", "Open server streams, by method (kind).", ["kind"])
