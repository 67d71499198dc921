"""The `/metrics` endpoint (exchange/metrics.py): served off the event loop, and never held up by a busy loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from exchange.metrics import LoopCollector, gauge, observe_gc_pauses, serve_metrics


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as a service's."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def test_a_scrape_reads_on_the_loop_and_serves_the_last_values_while_the_loop_is_busy(
    loop: asyncio.AbstractEventLoop,
) -> None:
    reads: list[str] = []

    def gather() -> list[GaugeMetricFamily]:
        reads.append(threading.current_thread().name)
        family = gauge("test_reads", "how often the state was read")
        family.add_metric([], len(reads))
        return [family]

    collector = LoopCollector(loop, gather)
    collector.TIMEOUT_S = 0.2
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"test_reads 1.0" in generate_latest(registry)
    assert reads and reads[0] != threading.current_thread().name  # read on the loop's thread

    busy_until = threading.Event()
    loop.call_soon_threadsafe(lambda: busy_until.wait(10))  # the loop is stuck in a long callback
    try:
        assert b"test_reads 1.0" in generate_latest(registry)  # the last values, without waiting for the loop
        assert not busy_until.is_set()
    finally:
        busy_until.set()
    deadline = time.monotonic() + 10
    while b"test_reads 1.0" in generate_latest(registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"test_reads 1.0" not in generate_latest(registry)  # fresh values again once the loop runs


def test_the_endpoint_is_served_by_a_thread_of_its_own() -> None:
    port = serve_metrics("127.0.0.1:0")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "python_info" in body  # prometheus_client's default collectors, in the process-wide registry
    assert "_created" not in body


def test_every_collection_of_the_garbage_collector_is_timed_by_its_generation() -> None:
    def count(generation: str) -> float:
        return REGISTRY.get_sample_value("exchange_gc_pause_seconds_count", {"generation": generation}) or 0.0

    before = count("2")
    callback = observe_gc_pauses()
    try:
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    assert count("2") == before + 2
    gc.collect(2)
    assert count("2") == before + 2  # removed: no longer timed
