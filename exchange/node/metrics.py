"""The node's counters of what it did since it started, shown by GetStatus (`counters`), and its Prometheus
series (exchange/metrics.py: the endpoint and the rules they follow): counters and histograms bound per market
(`MarketMetrics`), and the gauges read at scrape time (`node_gauges`).

`counters` is one process-wide registry, as metrics libraries keep them: incremented on the hot paths (a dict
update each), read by GetStatus and the benchmark (messages per order at each cluster size).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exchange.metrics import SECONDS_BUCKETS, SIZE_BUCKETS, gauge

if TYPE_CHECKING:  # the node's parts import this module for `counters`
    from exchange.node.broadcast import PeerSet
    from exchange.node.replica import Replica
    from exchange.node.sequencing import MarketPipeline

counters: collections.Counter[str] = collections.Counter()

ORDERS_REJECTED = Counter("exchange_orders_rejected_total",
                          "New orders refused: the engine's reason (applied, REJECTED) or the gRPC status they were "
                          "refused with before being sequenced.", ["reason"])
COMMANDS_ABORTED = Counter("exchange_commands_aborted_total",
                           "Commands (orders, cancels, amends) ABORTED: invalidated by a stale view max-retries "
                           "times, never numbered.", ["market"])
GATE_SECONDS = Histogram("exchange_gate_round_trip_seconds",
                         "One gated request to the Sequencer: sent until answered.", ["market"],
                         buckets=SECONDS_BUCKETS)
GATE_BATCH = Histogram("exchange_gate_batch_size", "Commands per gated request.", ["market"], buckets=SIZE_BUCKETS)
CATCH_UP_ENTRIES = Counter("exchange_catch_up_entries_total", "Log entries read from the Sequencer to catch up.",
                           ["market"])
STREAM_RECONNECTS = Counter("exchange_stream_reconnects_total",
                            "Long-lived streams opened again after one ended or failed (gate: to the Sequencer, "
                            "broadcast: to a peer).", ["kind"])
RATE_LIMITED = Counter("exchange_rate_limited_total", "Calls refused RESOURCE_EXHAUSTED by an account's rate limit.")
AUTH_FAILURES = Counter("exchange_authentication_failures_total", "Calls refused UNAUTHENTICATED (no, bad, unknown "
                        "or disabled API key).")
REGISTRY_RECORDS_REFUSED = Counter("exchange_registry_records_refused_total",
                                   "Account records in Consul KV ignored: not signed with the cluster secret, or "
                                   "older than the one held (docs/security.md).")


class MarketMetrics:
    """One market's series on a node: `market_metrics(market)`, one per market and process. What every order
    counts (accepted, trades, traded size) is a plain int, an increment of ~0.04 us where a prometheus_client
    Counter.inc costs ~0.33 us (checks and a lock); `OrderCounts` reports them as counters at scrape time. The
    rest, counted per gate round or rarely, are label children bound once."""

    __slots__ = ("accepted", "trades", "traded_size", "aborted", "gate_seconds", "gate_batch", "catch_up_entries")

    def __init__(self, market: str) -> None:
        self.accepted = 0
        self.trades = 0
        self.traded_size = 0
        self.aborted = COMMANDS_ABORTED.labels(market)
        self.gate_seconds = GATE_SECONDS.labels(market)
        self.gate_batch = GATE_BATCH.labels(market)
        self.catch_up_entries = CATCH_UP_ENTRIES.labels(market)


_markets: dict[str, MarketMetrics] = {}


def market_metrics(market: str) -> MarketMetrics:
    """The node's series of `market` (the same object for every caller, as a label child is)."""
    metrics = _markets.get(market)
    if metrics is None:
        metrics = _markets[market] = MarketMetrics(market)
    return metrics


class OrderCounts(Collector):
    """The counters every order adds to, read at scrape time from the plain counts the hot path keeps: orders
    received (`counters["orders"]`), accepted, trades and traded size (`MarketMetrics`). Reading ints needs no
    event loop: the endpoint's thread reads them."""

    def collect(self) -> list[CounterMetricFamily]:
        received = CounterMetricFamily("exchange_orders_received_total",
                                       "New orders received from clients (before any check).")
        received.add_metric([], counters["orders"])
        accepted = CounterMetricFamily("exchange_orders_accepted_total", "New orders of this node's clients "
                                       "sequenced and applied without a rejection.", labels=["market"])
        trades = CounterMetricFamily("exchange_trades_total", "Trades of the orders this node's clients sent (the "
                                     "taker's node counts).", labels=["market"])
        traded_size = CounterMetricFamily("exchange_traded_size_total", "Size traded by those trades (the market's "
                                          "size units).", labels=["market"])
        for market, metrics in list(_markets.items()):
            accepted.add_metric([market], metrics.accepted)
            trades.add_metric([market], metrics.trades)
            traded_size.add_metric([market], metrics.traded_size)
        return [received, accepted, trades, traded_size]

    def describe(self) -> list[CounterMetricFamily]:
        return self.collect()


REGISTRY.register(OrderCounts())

_rejected: dict[str, Counter] = {}


def order_rejected(reason: str) -> None:
    """Counts a refused new order (`reason`: an engine reason or a status code name, a handful of values)."""
    child = _rejected.get(reason)
    if child is None:
        child = _rejected[reason] = ORDERS_REJECTED.labels(reason)
    child.inc()




# A book's checksum costs a pass over the book (~0.5 us per resting order): a scrape computes it again at most this
# often per market while the market moves (an idle market's is always current). The pair shown is consistent:
# the checksum at exchange_book_checksum_seq.
CHECKSUM_EVERY_S = 10.0


class NodeGauges:
    """What a scrape reads from the node's state (called on its event loop: each market's sequence and checksum
    agree)."""

    def __init__(self, replica: Replica, pipelines: Mapping[str, MarketPipeline], peers: PeerSet,
                 serving: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self.replica = replica
        self.pipelines = pipelines
        self.peers = peers
        self.serving = serving
        self.clock = clock
        self._checksums: dict[str, tuple[int, int, float]] = {}  # market -> (seq, checksum, computed at)

    def checksum(self, market: str) -> tuple[int, int]:
        """(sequence, the book's checksum at it), computed again once the market has moved and the last one is
        CHECKSUM_EVERY_S old."""
        seq, now = self.replica.applied_seq(market), self.clock()
        known = self._checksums.get(market)
        if known is None or (known[0] != seq and now - known[2] >= CHECKSUM_EVERY_S):
            known = self._checksums[market] = (seq, self.replica.checksum(market), now)
        return known[0], known[1]

    def __call__(self) -> list[GaugeMetricFamily]:
        replica = self.replica
        applied = gauge("exchange_applied_seq", "The last log entry applied here.", ["market"])
        known = gauge("exchange_known_seq", "The highest sequence this node knows the Sequencer has numbered.",
                      ["market"])
        lag = gauge("exchange_replica_lag", "Entries numbered by the Sequencer and not yet applied here.", ["market"])
        pending = gauge("exchange_pending_commands",
                        "Commands taken from clients, not yet sequenced and applied here.", ["market"])
        oldest = gauge("exchange_oldest_pending_seconds", "Age of the oldest of those commands (0: none).", ["market"])
        checksum = gauge("exchange_book_checksum", "The book's checksum (CRC32, as GetStatus) at its sequence "
                         "(exchange_book_checksum_seq).", ["market"])
        checksum_seq = gauge("exchange_book_checksum_seq", "The sequence exchange_book_checksum belongs to.",
                             ["market"])
        for market, pipeline in self.pipelines.items():
            applied.add_metric([market], replica.applied_seq(market))
            known.add_metric([market], replica.known_seq(market))
            lag.add_metric([market], replica.lag(market))
            pending.add_metric([market], pipeline.pending)
            oldest.add_metric([market], pipeline.oldest_pending_s())
            seq, value = self.checksum(market)
            checksum.add_metric([market], value)
            checksum_seq.add_metric([market], seq)
        queue = gauge("exchange_broadcast_queue_depth", "Broadcasts queued for peers, not yet written.")
        queue.add_metric([], self.peers.queued())
        up = gauge("exchange_node_serving", "1 while the node serves clients, 0 while it starts or stops.")
        up.add_metric([], 1 if self.serving() else 0)
        return [applied, known, lag, pending, oldest, checksum, checksum_seq, queue, up]
