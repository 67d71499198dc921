"""Market data under load: the cluster's streaming entry load (bench.cluster_load's, batches of 100) alone, then with
100 StreamTrades subscribers reading on one node and 20 more that opened the stream and stopped reading.

Reported: the order throughput without and with them (target: >= 0.8x), the trades delivered per second to
the readers, the node's CPU per delivered trade, and its resident memory per subscriber (the stalled ones
included: a subscriber reads the retained trades through a cursor, so one that stops reading holds at most one
batch of them). The subscribers run in a process of their own, so their client-side CPU is not the load's; on a
machine with fewer cores than the cluster, that process and the cluster share them, which the ratio includes
(the node's own CPU share and cost per delivered trade are printed to tell the two apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.cluster_load import _cpu_seconds, _keys, _log, _stream_entry
from devtools.local_cluster import Cluster
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

READERS = 100
STALLED = 20


def _rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _subscribe(address: str, readers: int, stalled: int) -> dict:
    """`readers` StreamTrades that read everything and `stalled` ones that never read, until stdin closes; the
    trades the readers received."""
    channel = grpc.aio.insecure_channel(address)
    stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
    received = [0] * readers
    ended: list[str] = []

    async def read(number: int) -> None:
        try:
            async for message in stub.StreamTrades(pb.StreamTradesRequest()):
                received[number] += len(message.trades)
        except grpc.aio.AioRpcError as error:  # OUT_OF_RANGE: it fell further behind than the retained trades
            ended.append(error.code().name)

    stalled_calls = [stub.StreamTrades(pb.StreamTradesRequest()) for _ in range(stalled)]
    tasks = [asyncio.ensure_future(read(n)) for n in range(readers)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes it
    for task in tasks:
        task.cancel()
    for call in stalled_calls:
        call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await channel.close()
    return {"trades": sum(received), "readers_reached": sum(1 for r in received if r), "ended": ended}


def _last_trade_id(cluster: Cluster) -> int:
    with cluster.channel(cluster.node_address(0), None) as channel:
        return exchange_pb2_grpc.ExchangeNodeStub(channel).GetTicker(pb.GetTickerRequest(), timeout=10).last_trade_id


def run(seconds: float = 4.0, workdir: Path | None = None) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-market-data-"))
    cluster = Cluster(workdir / "cluster", nodes=3, secret="bench-secret")
    try:
        cluster.start()
        keys = _keys(cluster)
        _log("market data: the streaming entry load alone (warm-up, then measured)")
        asyncio.run(_stream_entry(cluster.node_addresses, 1.0, 1, keys, batch=100))
        node = cluster.nodes[0]
        cpu_before, rss_start = _cpu_seconds(node.pid), _rss_kib(node.pid)
        alone = asyncio.run(_stream_entry(cluster.node_addresses, seconds, 2, keys, batch=100))
        cpu_alone = _cpu_seconds(node.pid) - cpu_before
        rss_before = _rss_kib(node.pid)
        growth_alone = rss_before - rss_start  # what the load itself adds (journal, ...)
        _log(f"market data: {alone.rate:,.0f} orders/s alone; {READERS} readers and {STALLED} stalled "
             f"StreamTrades subscribers on {node.name}")
        subscribers = subprocess.Popen(
            [sys.executable, "-m", "bench.market_data", "--subscribe", cluster.node_address(0),
             str(READERS), str(STALLED)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert subscribers.stdout is not None
        assert subscribers.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the streams are open (a bench, not a test: a settling pause is fine)
        rss_subscribed = _rss_kib(node.pid)
        cpu_before, first_trade = _cpu_seconds(node.pid), _last_trade_id(cluster)
        loaded = asyncio.run(_stream_entry(cluster.node_addresses, seconds, 3, keys, batch=100))
        cpu_loaded = _cpu_seconds(node.pid) - cpu_before
        time.sleep(1.0)  # the readers drain what the load's last trades sent them
        rss_with, made = _rss_kib(node.pid), _last_trade_id(cluster) - first_trade
        output, _ = subscribers.communicate("", timeout=60)
        delivered = json.loads(output.strip().splitlines()[-1])
        cluster.wait_converged(120)
    except Exception:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
    trades_per_s = delivered["trades"] / loaded.seconds
    extra_cpu = max(0.0, cpu_loaded / max(loaded.seconds, 1e-9) - cpu_alone / max(alone.seconds, 1e-9))
    return {
        "orders_per_s_alone": alone.rate,
        "orders_per_s_with_subscribers": loaded.rate,
        "ratio": loaded.rate / alone.rate if alone.rate else 0.0,
        "readers": READERS, "stalled": STALLED, "readers_reached": delivered["readers_reached"],
        "trades_delivered_per_s": trades_per_s,
        "delivered_share": delivered["trades"] / (made * READERS) if made else 0.0,
        "trades_made_per_s": made / loaded.seconds,
        "readers_ended": dict(Counter(delivered["ended"])),
        "node_cpu_us_per_trade_per_subscriber": extra_cpu * 1e6 / trades_per_s if trades_per_s else 0.0,
        "node_rss_kib_per_subscriber": (rss_subscribed - rss_before) / (READERS + STALLED),
        "node_rss_kib_per_subscriber_under_load": ((rss_with - rss_subscribed) - growth_alone) / (READERS + STALLED),
        "node_cpu_share_alone": cpu_alone / max(alone.seconds, 1e-9),
        "node_cpu_share_with_subscribers": cpu_loaded / max(loaded.seconds, 1e-9),
        "errors": alone.errors + loaded.errors, "aborted": alone.aborted + loaded.aborted,
    }


def table(result: dict) -> str:
    ok = result["ratio"] >= 0.8
    return "\n".join([
        f"Market data: {result['readers']} StreamTrades readers + {result['stalled']} stalled subscribers on one node",
        f"  orders/s alone                 {result['orders_per_s_alone']:>12,.0f}",
        f"  orders/s with subscribers      {result['orders_per_s_with_subscribers']:>12,.0f}"
        f"   ratio {result['ratio']:.2f} (target >= 0.8: {'PASS' if ok else 'FAIL'})",
        f"  trades made/s                  {result['trades_made_per_s']:>12,.0f}",
        f"  trades delivered/s (all)       {result['trades_delivered_per_s']:>12,.0f}"
        f"   ({result['delivered_share']:.0%} of trades made x readers; {result['readers_reached']} readers got some)",
        f"  readers ended by the node      {result['readers_ended'] or 'none'}"
        " (OUT_OF_RANGE: fell over 10,000 trades behind)",
        f"  node CPU per trade per reader  {result['node_cpu_us_per_trade_per_subscriber']:>12.1f} us"
        f"   (the node's CPU: {result['node_cpu_share_alone']:.0%} of a core alone, "
        f"{result['node_cpu_share_with_subscribers']:.0%} with them)",
        f"  node memory per subscriber     {result['node_rss_kib_per_subscriber']:>12.1f} KiB when subscribed, "
        f"{result['node_rss_kib_per_subscriber_under_load']:+.1f} KiB more under load (RSS; the load's own growth "
        "subtracted)",
        f"  order errors / aborted         {result['errors']:>7} / {result['aborted']}",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribe", nargs=3, metavar=("ADDRESS", "READERS", "STALLED"),
                        help="(internal) run the subscribers and print what they received")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if args.subscribe:
        address, readers, stalled = args.subscribe
        print(json.dumps(asyncio.run(_subscribe(address, int(readers), int(stalled)))), flush=True)
        return 0
    print(table(run(args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
