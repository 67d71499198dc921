"""Failover of the client library when the node it uses is SIGKILLed in the middle of a stream of orders.

Two clients write at once through the killed node: `submit_many` (OrderEntryBatch, many orders in flight) and
one-at-a-time `create_order`. Every order must end exactly once: each gets a result, and the Sequencer's log
holds each client_order_id exactly once, at the seq its result names (devtools.verify replays the log), even
though the library sent some of them again, on another node, after the connection dropped.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from devtools.local_cluster import Cluster, wait_until
from devtools.verify import replay_cluster
from devtools.workload import Workload
from exchange.client import Client, ClientStats, Connection, NewOrder, OrderResult, OrderType, RetryPolicy, Side
from exchange.errors import ExchangeError

pytestmark = pytest.mark.integration

WORKLOAD = Workload(markets=("BTC-USD",))
BATCHED, SINGLE = 20000, 300


def orders(count: int, seed: int, prefix: str) -> list[NewOrder]:
    generator = WORKLOAD.orders(random.Random(seed), ids=prefix)
    drawn = [generator.request() for _ in range(count)]
    return [NewOrder(Side(r.side), r.size, r.limit_price, OrderType.LIMIT, r.market, r.client_order_id) for r in drawn]


def test_every_order_ends_exactly_once_when_the_clients_node_is_killed_mid_stream(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start()
    # the clients stay on the first node they reach: node-1, the one killed
    policy = RetryPolicy(timeout=60, attempt_timeout=5)
    batched_orders, single_orders = orders(BATCHED, 1, "batch-"), orders(SINGLE, 2, "single-")
    results: dict[str, list[OrderResult | ExchangeError]] = {"batched": [], "single": []}
    stats: dict[str, ClientStats] = {}
    single_sent = threading.Event()

    def batched() -> None:
        with Client(cluster.node_addresses, policy=policy,
                    connection=Connection(api_key=cluster.api_keys["alice"])) as client:
            results["batched"] = client.submit_many(batched_orders, batch_size=10, window=40)
            stats["batched"] = client.stats

    def single() -> None:
        bob = Connection(api_key=cluster.api_keys["bob"])
        with Client(cluster.node_addresses, policy=policy, connection=bob) as client:
            for number, order in enumerate(single_orders):
                if number == 20:
                    single_sent.set()
                try:
                    results["single"].append(client.place(order))
                except ExchangeError as error:
                    results["single"].append(error)
            stats["single"] = client.stats

    writers = [threading.Thread(target=batched), threading.Thread(target=single)]
    for writer in writers:
        writer.start()
    wait_until(lambda: single_sent.is_set() and cluster.status(1).markets[0].applied_seq > 1000, 60,
               "both clients to be well under way")
    killed_at = cluster.status(1).markets[0].applied_seq
    cluster.nodes[0].kill()
    started = time.monotonic()
    for writer in writers:
        writer.join(timeout=180)
    recovery = time.monotonic() - started
    assert not any(writer.is_alive() for writer in writers)

    errors = [r for rs in results.values() for r in rs if not isinstance(r, OrderResult)]
    assert not errors, errors[:5]
    answered = [r for rs in results.values() for r in rs if isinstance(r, OrderResult)]
    assert len(answered) == BATCHED + SINGLE
    assert {r.client_order_id for r in answered} == {o.client_order_id for o in batched_orders + single_orders}

    view = cluster.wait_converged(nodes=[1, 2])
    replay = replay_cluster(cluster)
    logged = Counter(command.client_order_id for command in replay.commands["BTC-USD"].values()
                     if command.WhichOneof("kind") == "new_order")
    ours = {r.client_order_id for r in answered}
    assert all(logged[client_order_id] == 1 for client_order_id in ours), "each order in the log exactly once"
    seq_of = {command.client_order_id: seq for seq, command in replay.commands["BTC-USD"].items()}
    assert all(seq_of[r.client_order_id] == r.seq for r in answered), "each result names the logged order"
    assert (replay.engine.last_seq("BTC-USD"), replay.engine.checksum("BTC-USD")) == view["BTC-USD"]
    duplicates = sum(1 for r in answered if r.duplicate)
    assert stats["batched"].resent_orders > 0 and stats["batched"].node_failures > 0, stats
    assert stats["single"].retries > 0 and stats["single"].node_failures > 0, stats
    print(f"\nfailover: node-1 killed at seq {killed_at}; {len(answered)} orders answered "
          f"({BATCHED} batched, {SINGLE} single), {duplicates} answered as duplicates after a resend, "
          f"{len(ours)} distinct ids, each logged once; log at seq {view['BTC-USD'][0]}; "
          f"batched client: {stats['batched']}; single client: {stats['single']}; "
          f"writers done {recovery:.1f}s after the kill")
