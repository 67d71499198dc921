"""Market-data benchmark: what public stream subscribers cost the cluster's order entry.

A real 3-node cluster (bench/cluster.py's setup) runs bench/cluster.py's streaming entry load (OrderEntryBatch,
2 streams per node) several times: without subscribers; with SUBSCRIBERS attached to node 1 (100 StreamBook
readers at depth 10, each reading every message); with STUCK subscribers that read their first message and
never again; and without subscribers once more (the machine's noise). The subscribers run in a process of
their own (`python -m bench.market_data subscribe ...`), so their CPU is not the load generator's.

Printed: order throughput of each run against the baseline (the better of the two runs without subscribers),
updates delivered per second (all subscribers), node 1's extra CPU per update per subscriber, node 1's memory
per subscriber (RSS with the subscribers attached minus before, over their number), and what the stuck ones
cost. Targets: >= TARGET_RATIO of the order throughput with the subscribers attached, and with the stuck ones.

To measure another stream alongside (StreamTrades, say), add its kind to STREAMS and a count to SUBSCRIBERS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.cluster import STREAM_BATCHES, _cpu_seconds, _keys, _log, _stream_entry, _verdict
from devtools.cluster import Cluster, wait_until
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

# kind -> (RPC of ExchangeNode, its request for a market): one line per kind of public stream
STREAMS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "StreamBook": ("StreamBook", lambda market: pb.StreamBookRequest(market=market, depth=10)),
}
SUBSCRIBERS = {"StreamBook": 100}  # readers per kind in the "with subscribers" run
STUCK = {"StreamBook": 20}  # subscribers that stop reading after their first message
TARGET_RATIO = 0.8  # order throughput with subscribers >= x the throughput without
BATCH = STREAM_BATCHES[-1]  # the streaming load at its highest rate (OrderEntryBatch)


def _rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the subscriber process ----------------------------------------------------------------------------------


async def _subscribe(address: str, market: str, readers: dict[str, int], stuck: dict[str, int]) -> dict:
    """Opens the streams, reads until SIGTERM, returns what each kind received."""
    received = {kind: {"messages": 0, "levels": 0, "streams": 0, "errors": 0} for kind in STREAMS}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channels: list[grpc.aio.Channel] = []

    def open_call(kind: str) -> Any:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        method, request = STREAMS[kind]
        return getattr(exchange_pb2_grpc.ExchangeNodeStub(channel), method)(request(market))

    async def read(kind: str, keep_reading: bool) -> None:
        counts = received[kind]
        call = open_call(kind)
        try:
            async for message in call:
                counts["messages"] += 1
                counts["levels"] += len(getattr(message, "bids", ())) + len(getattr(message, "asks", ()))
                if counts["messages"] == 1:
                    counts["streams"] += 1
                if not keep_reading:
                    await stop.wait()  # never read again
                    break
        except grpc.aio.AioRpcError:
            if not stop.is_set():
                counts["errors"] += 1

    tasks = [asyncio.create_task(read(kind, True)) for kind, count in readers.items() for _ in range(count)]
    tasks += [asyncio.create_task(read(kind, False)) for kind, count in stuck.items() for _ in range(count)]
    print("ready", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return received


class Subscribers:
    """The subscriber process: started with the streams open, stopped with its counts."""

    def __init__(self, address: str, readers: dict[str, int], stuck: dict[str, int]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.market_data", "subscribe", address, json.dumps(readers), json.dumps(stuck)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscriber process did not start")
        self.started = time.monotonic()
        self.cpu_before = _cpu_seconds(self.process.pid)

    def stop(self) -> dict:
        cpu = _cpu_seconds(self.process.pid) - self.cpu_before
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=60)
        return {"received": json.loads(output.strip().splitlines()[-1]), "seconds": time.monotonic() - self.started,
                "cpu_seconds": cpu}


# -- the runs --------------------------------------------------------------------------------------------------


def _entry_run(cluster: Cluster, seconds: float, label: str) -> dict:
    """One streaming-entry run; node 1's CPU over it; then the replicas must converge."""
    node = cluster.nodes[0]
    cpu_before = _cpu_seconds(node.pid)
    run = asyncio.run(_stream_entry(cluster.node_addresses, seconds, 17, _keys(cluster), batch=BATCH))
    node_cpu = _cpu_seconds(node.pid) - cpu_before
    cluster.wait_converged(120)
    _log(f"{label}: {run.rate:,.0f} orders/s ({run.orders:,} orders, errors {run.errors}, aborted {run.aborted}), "
         f"node-1 CPU {node_cpu:.2f} s")
    return {"label": label, "rate": run.rate, "orders": run.orders, "seconds": run.seconds, "errors": run.errors,
            "aborted": run.aborted, "node_cpu_seconds": node_cpu}


def _with_subscribers(cluster: Cluster, seconds: float, readers: dict[str, int], stuck: dict[str, int],
                      label: str) -> dict:
    node = cluster.nodes[0]
    rss_before = _rss_bytes(node.pid)
    subscribers = Subscribers(cluster.node_address(0), readers, stuck)
    try:
        wait_until(lambda: _rss_bytes(node.pid) > 0, 5, "node 1's memory")
        time.sleep(1.0)  # every stream has its snapshot
        rss_attached = _rss_bytes(node.pid)
        run = _entry_run(cluster, seconds, label)
        rss_after = _rss_bytes(node.pid)
    finally:
        delivered = subscribers.stop()
    count = sum(readers.values()) + sum(stuck.values())
    return run | {"subscribers": count, "readers": readers, "stuck": stuck, "delivered": delivered,
                  "rss_before": rss_before, "rss_attached": rss_attached, "rss_after": rss_after}


def run(seconds: float = 4.0, workdir: Path | None = None) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-market-data-"))
    cluster = Cluster(workdir / "cluster", nodes=3, secret="bench-secret")
    _log("market data: Consul, the Sequencer and 3 nodes")
    try:
        cluster.start()
        _entry_run(cluster, min(seconds, 2.0), "warm-up")
        baseline = _entry_run(cluster, seconds, "without subscribers")
        attached = _with_subscribers(cluster, seconds, SUBSCRIBERS, {}, f"with {sum(SUBSCRIBERS.values())} readers")
        stuck = _with_subscribers(cluster, seconds, {}, STUCK, f"with {sum(STUCK.values())} stuck subscribers")
        again = _entry_run(cluster, seconds, "without subscribers, again")
    except Exception:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
    return {"baseline": [baseline, again], "attached": attached, "stuck": stuck, "batch": BATCH}


def table(result: dict) -> str:
    baselines = result["baseline"]
    best = max(baselines, key=lambda r: r["rate"])
    attached, stuck = result["attached"], result["stuck"]
    lines = [f"market data: streaming entry (OrderEntryBatch, {result['batch']} orders per message) with public "
             "stream subscribers on node 1; baseline: the better of the two runs without",
             f"{'run':<34} {'orders/s':>10} {'ratio':>6} {'node-1 CPU s':>13} {'node-1 RSS MB':>14}"]
    for run in (*baselines, attached, stuck):
        rss = f"{run['rss_after'] / 2**20:>14.1f}" if "rss_after" in run else f"{'':>14}"
        lines.append(f"{run['label']:<34} {run['rate']:>10,.0f} {run['rate'] / best['rate']:>5.2f}x "
                     f"{run['node_cpu_seconds']:>13.2f} {rss}")
    verdicts = []
    for run, what in ((attached, "readers"), (stuck, "stuck subscribers")):
        ratio = run["rate"] / best["rate"]
        verdicts.append(f"order throughput with {run['subscribers']} {what} >= {TARGET_RATIO}x without: "
                        f"{_verdict(ratio >= TARGET_RATIO)} ({ratio:.3f})")
    # what the readers got and cost: node-1 CPU beyond the baseline's for as many orders
    baseline_cpu_per_order = best["node_cpu_seconds"] / max(best["orders"], 1)
    for kind, count in attached["readers"].items():
        got = attached["delivered"]["received"][kind]
        updates = max(got["messages"] - got["streams"], 0)
        seconds = attached["seconds"] or 1.0
        extra_cpu = attached["node_cpu_seconds"] - baseline_cpu_per_order * attached["orders"]
        per_update = extra_cpu / max(updates, 1) * 1e6
        memory = (attached["rss_attached"] - attached["rss_before"]) / max(count, 1)
        lines.append(f"{kind}: {count} readers got {updates:,} updates ({updates / seconds:,.0f}/s in all, "
                     f"{updates / seconds / max(count, 1):,.0f}/s each; {got['levels']:,} levels), errors "
                     f"{got['errors']}; node-1 CPU per update per subscriber {per_update:.1f} us; memory per "
                     f"subscriber {memory / 1024:.1f} KiB (RSS when attached); subscriber process CPU "
                     f"{attached['delivered']['cpu_seconds']:.2f} s")
    stuck_count = max(stuck["subscribers"], 1)
    growth = stuck["rss_after"] - stuck["rss_attached"]
    lines.append(f"stuck: {stuck['subscribers']} subscribers that stopped reading: node-1 RSS "
                 f"{(stuck['rss_attached'] - stuck['rss_before']) / stuck_count / 1024:.1f} KiB each when attached, "
                 f"{growth / 2**20:+.1f} MiB over the run ({growth / stuck_count / 1024:+.1f} KiB each) while "
                 f"{stuck['orders']:,} orders flowed")
    return "\n".join(lines + verdicts)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.market_data subscribe ADDRESS READERS STUCK`: the subscriber process (prints its counts as
    JSON on SIGTERM); without arguments: the section alone."""
    parser = argparse.ArgumentParser(prog="python -m bench.market_data")
    commands = parser.add_subparsers(dest="command")
    subscribe = commands.add_parser("subscribe")
    subscribe.add_argument("address")
    subscribe.add_argument("readers", type=json.loads)
    subscribe.add_argument("stuck", type=json.loads)
    subscribe.add_argument("--market", default="")
    args = parser.parse_args(argv)
    if args.command == "subscribe":
        print(json.dumps(asyncio.run(_subscribe(args.address, args.market, args.readers, args.stuck))), flush=True)
        return 0
    result = run()
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
