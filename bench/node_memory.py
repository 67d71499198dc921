"""Memory and restart time of the exchange nodes as the log grows: `python -m bench.node_memory` (not in CI).

A 3-node cluster (devtools.local_cluster.Cluster, no rate limit) is fed --orders new orders through OrderEntryBatch
(one stream per node, batches of --batch), each with its own client_order_id: passive limits a few ticks off a
mid that drifts slowly, and IOCs crossing it, so the resting book stays small and what grows is only what a node
keeps per order. At each checkpoint the replicas must converge; then every node's resident memory (VmRSS, and
its peak VmHWM) is read, and node 1 is restarted and timed until it serves again, current: --restarts times
after a graceful stop (SIGTERM) and as many after a SIGKILL (the median of each is reported).

`--heap N` instead feeds N orders to a Replica in this process under tracemalloc and prints the allocation
sites that hold the most memory, at N/4 and at N, and what grew between them (slow: tracemalloc costs ~10x).

Run it from another checkout (e.g. `git worktree add` of main, with this file copied in) for the "before" figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench.sequencer_memory import _status
from devtools.local_cluster import TRADERS, Cluster, serving, wait_until
from exchange import engine as eng
from exchange.node.replica import Replica
from exchange.shared.wire import AUTHORIZATION
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

MARKET = "BTC-USD"
WINDOW = 4  # batches in flight per stream


def _order(number: int) -> tuple[types_pb2.Side, types_pb2.OrderType, int, int]:
    """(side, order type, size, price) of order `number`: odd ones rest a few ticks off the mid, even ones are
    IOCs that cross it (about as much size as rests, and cancel a resting order of their own account that they
    meet: CANCEL_MAKER), so the book stays small."""
    mid = 10_000 + (number // 1000) % 50
    size = 1 + number % 3
    if number % 2:
        side = types_pb2.BUY if number % 4 == 1 else types_pb2.SELL
        price = mid - 1 - number % 5 if side == types_pb2.BUY else mid + 1 + number % 5
        return side, types_pb2.LIMIT, size, price
    side = types_pb2.SELL if number % 4 == 0 else types_pb2.BUY
    return side, types_pb2.IOC, size, mid - 10 if side == types_pb2.SELL else mid + 10


def _client_order_id(number: int) -> str:
    return f"bench-{number:012d}-abcdef"


def _request(number: int) -> pb.CreateOrderRequest:
    side, order_type, size, price = _order(number)
    return pb.CreateOrderRequest(market=MARKET, side=side, order_type=order_type, size=size, limit_price=price,
                                 client_order_id=_client_order_id(number), self_trade_prevention=_stp(order_type))


def _command(number: int) -> types_pb2.Command:
    side, order_type, size, price = _order(number)
    return types_pb2.Command(
        market=MARKET, client_order_id=_client_order_id(number), origin_node="bench", origin_ref=number,
        account=TRADERS[number % len(TRADERS)],
        new_order=types_pb2.NewOrderCommand(side=side, order_type=order_type, size=size, price=price,
                                            self_trade_prevention=_stp(order_type)))


def _stp(order_type: types_pb2.OrderType) -> types_pb2.SelfTradePrevention:
    return types_pb2.CANCEL_MAKER if order_type == types_pb2.IOC else types_pb2.CANCEL_TAKER


async def _feed(cluster: Cluster, first: int, last: int, batch: int) -> int:
    """Sends orders first..last over one OrderEntryBatch stream per node; returns how many failed (the first
    failure is printed)."""
    addresses = cluster.node_addresses
    failed = 0

    async def stream(index: int) -> None:
        nonlocal failed
        numbers = range(first + index * batch, last + 1, batch * len(addresses))
        window = asyncio.Semaphore(WINDOW)

        async def batches() -> AsyncIterator[pb.OrderBatch]:
            for start in numbers:
                await window.acquire()
                stop = min(start + batch, last + 1)
                yield pb.OrderBatch(orders=[_request(n) for n in range(start, stop)])

        key = cluster.api_keys[TRADERS[index % len(TRADERS)]]
        async with grpc.aio.insecure_channel(addresses[index]) as channel:
            stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
            async for answer in stub.OrderEntryBatch(batches(), timeout=3600,
                                                     metadata=((AUTHORIZATION, f"Bearer {key}"),)):
                window.release()
                errors = [result.error for result in answer.results if result.HasField("error")]
                if errors and not failed:
                    print(f"node {index + 1}: {errors[0].code}: {errors[0].message}", file=sys.stderr, flush=True)
                failed += len(errors)

    await asyncio.gather(*(stream(i) for i in range(len(addresses))))
    return failed


def _restart(cluster: Cluster, index: int, kill: bool) -> float:
    """Stops node `index` (SIGTERM, or SIGKILL) and times its start until it serves, current."""
    node = cluster.nodes[index]
    node.kill() if kill else node.stop(timeout=60)
    started = time.monotonic()
    cluster.nodes[index] = cluster.make_node(index)
    cluster.nodes[index].start()
    wait_until(lambda: serving(cluster.node_address(index)) or not cluster.nodes[index].running, 600,
               f"node {index + 1} to serve again", interval=0.01)
    seconds = time.monotonic() - started
    cluster.wait_converged(120)
    return seconds


def run(orders: int, checkpoints: list[int], batch: int, label: str, node_args: list[str],
        restarts: int = 3) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="node-memory-"))
    cluster = Cluster(workdir, nodes=3, extra_node_args=node_args)
    rows = []
    try:
        cluster.start()
        sent, started = 0, time.monotonic()
        for checkpoint in checkpoints:
            failed = asyncio.run(_feed(cluster, sent + 1, checkpoint, batch))
            sent = checkpoint
            cluster.wait_converged(300)
            rate = sent / (time.monotonic() - started)
            memory = [_status(node.pid or 0) for node in cluster.nodes]
            resting = cluster.status(0).markets[0].resting_orders
            graceful = statistics.median(_restart(cluster, 0, kill=False) for _ in range(restarts))
            killed = statistics.median(_restart(cluster, 0, kill=True) for _ in range(restarts))
            after = _status(cluster.nodes[0].pid or 0)
            rows.append({"code": label, "orders": sent, "rss_mb": [m["VmRSS"] for m in memory],
                         "peak_mb": [m["VmHWM"] for m in memory], "restart_s": graceful, "restart_kill_s": killed,
                         "rss_after_restart_mb": after["VmRSS"], "failed": failed, "resting": resting})
            print(f"{label}: {sent:,} orders ({rate:,.0f}/s, {failed} failed, {resting} resting): RSS "
                  f"{'/'.join(str(m['VmRSS']) for m in memory)} MB (peak {'/'.join(str(m['VmHWM']) for m in memory)}); "
                  f"node 1 serves again {graceful:.2f} s after a graceful stop, {killed:.2f} s after SIGKILL; "
                  f"RSS after {after['VmRSS']} MB", file=sys.stderr, flush=True)
            started = time.monotonic() - sent / rate
    finally:
        cluster.stop()
    return rows


def heap(orders: int, top: int = 8) -> None:
    """Feeds `orders` orders to an in-process Replica under tracemalloc; prints where the memory is held."""
    replica = Replica([eng.MarketConfig(MARKET)])

    def feed(first: int, last: int) -> None:
        for n in range(first, last + 1):
            replica.offer(types_pb2.SequencedCommand(market=MARKET, seq=n, command=_command(n).SerializeToString()))

    tracemalloc.start(3)
    first = orders // 4
    feed(1, first)
    early = tracemalloc.take_snapshot()
    feed(first + 1, orders)
    late = tracemalloc.take_snapshot()
    print(f"resting orders: {replica.view(MARKET).resting_orders}")
    for title, snapshot in ((f"held at {first:,} orders", early), (f"held at {orders:,} orders", late)):
        stats = snapshot.statistics("lineno")
        print(f"{title}: {sum(s.size for s in stats) / 1e6:.1f} MB traced")
        for stat in stats[:top]:
            print(f"  {stat.size / 1e6:7.1f} MB {stat.count:>10,} blocks  {stat.traceback}")
    print(f"grown from {first:,} to {orders:,} orders, by allocation site:")
    for diff in late.compare_to(early, "lineno")[:top]:
        print(f"  {diff.size_diff / 1e6:+7.1f} MB ({diff.size_diff / (orders - first):+5.0f} B per order)  "
              f"{diff.traceback}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.node_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,500000,1000000", help="comma-separated order counts")
    parser.add_argument("--batch", type=int, default=500, help="orders per OrderBatch")
    parser.add_argument("--restarts", type=int, default=3, help="restarts of each kind per checkpoint (median)")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--node-args", default="", help="extra flags for every node, e.g. '--journal-size 50000'")
    parser.add_argument("--heap", type=int, default=0, help="profile an in-process replica fed this many orders")
    args = parser.parse_args(argv)
    if args.heap:
        heap(args.heap)
        return 0
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.orders} | {args.orders})
    rows = run(args.orders, checkpoints, args.batch, args.label, args.node_args.split(), args.restarts)
    print(f"{'code':<24} {'orders':>10} {'RSS MB (nodes 1/2/3)':>22} {'peak MB':>16} {'restart (TERM)':>15} "
          f"{'restart (KILL)':>15} {'RSS after':>10}")
    for row in rows:
        print(f"{row['code']:<24} {row['orders']:>10,} {'/'.join(map(str, row['rss_mb'])):>22} "
              f"{'/'.join(map(str, row['peak_mb'])):>16} {row['restart_s']:>14.2f}s {row['restart_kill_s']:>14.2f}s "
              f"{row['rss_after_restart_mb']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
