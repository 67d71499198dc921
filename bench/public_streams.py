"""Public streams benchmark: what StreamBook and StreamTrades subscribers cost the cluster's order entry.

A real 3-node cluster (bench/cluster_load.py's setup) runs bench/cluster_load.py's streaming entry load
(OrderEntryBatch, 2 streams per node) in ROUNDS interleaved rounds of three runs: without subscribers; with
SUBSCRIBERS attached to node 1 (100 StreamBook readers at depth 10 and 100 StreamTrades readers, each reading every
message); with STUCK subscribers (20 of each) that read their first message and never again until the run is over.
The subscribers run in a process of their own (`python -m bench.public_streams subscribe ...`), so their CPU is not
the load generator's, at a lower CPU priority (READER_NICENESS): readers belong on other machines, and on a machine
with fewer cores than the cluster they would otherwise take the cluster's cores. A reader that then falls behind gets
merged updates, by design; so what the readers got is printed with the throughput: updates delivered per second,
the share of merged ones (a book update covering more than one sequence, a trade message with the trades of more
than one command), and every StreamBook message checked by the client library's local book
(exchange/client/book.py: no gap, the top-10 checksum) with the count verified and failed.

Printed: order throughput (best of the rounds) against the baseline's, updates delivered per second (all
subscribers), node 1's extra CPU per update per subscriber, node 1's memory per subscriber (RSS with the
subscribers attached minus before, over their number), and what a stuck stream held when it was read again
(everything the node, the network and the client had queued for it). Targets: >= TARGET_RATIO of the order
throughput with the readers attached, and with the stuck ones.

Another public stream is one line in STREAMS and a count in SUBSCRIBERS and STUCK. (bench/market_data.py
measures StreamTrades alone, with its trade-specific figures.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.cluster_load import STREAM_BATCHES, _cpu_seconds, _keys, _log, _stream_entry, _verdict
from devtools.local_cluster import Cluster, wait_until
from exchange.client.book import BookTracker, Diverged
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

# kind -> (RPC of ExchangeNode, its request for a market): one line per kind of public stream
STREAMS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "StreamBook": ("StreamBook", lambda market: pb.StreamBookRequest(market=market, depth=10)),
    "StreamTrades": ("StreamTrades", lambda market: pb.StreamTradesRequest(market=market)),
}
SUBSCRIBERS = {"StreamBook": 100, "StreamTrades": 100}  # readers per kind in the "with subscribers" run
STUCK = {"StreamBook": 20, "StreamTrades": 20}  # subscribers that stop reading after their first message
TARGET_RATIO = 0.8  # order throughput with subscribers >= x the throughput without
BATCH = STREAM_BATCHES[-1]  # the streaming load at its highest rate (OrderEntryBatch)
ROUNDS = 3  # interleaved rounds of each run; each figure is its best (noise here only ever slows a run down)
READER_NICENESS = 10  # the subscriber process's `nice`: the cluster's cores go to the cluster first


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
    """Opens the streams and reads until SIGTERM; then each stuck stream reads what was waiting for it (until
    it is quiet for a second): the most its stream held. Returns what each kind received."""
    received = {kind: {"messages": 0, "levels": 0, "streams": 0, "errors": 0, "stuck_streams": 0,
                       "held_messages": 0, "held_bytes": 0, "most_held_bytes": 0, "updates": 0, "merged": 0,
                       "verified": 0, "failed": 0} for kind in STREAMS}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channels: list[grpc.aio.Channel] = []

    def open_call(kind: str) -> Any:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        method, request = STREAMS[kind]
        return getattr(exchange_pb2_grpc.ExchangeNodeStub(channel), method)(request(market))

    async def read(kind: str) -> None:
        counts = received[kind]
        book = BookTracker(market, 10) if kind == "StreamBook" else None  # the client library's checks
        first = True
        try:
            async for message in open_call(kind):
                if book is not None:  # a snapshot, then updates: each covers last_seq - first_seq + 1 sequences
                    counts["streams"] += message.snapshot
                    counts["updates"] += not message.snapshot
                    counts["merged"] += not message.snapshot and message.last_seq > message.first_seq
                    counts["levels"] += len(message.bids) + len(message.asks)
                    try:
                        book.on_message(message)
                        counts["verified"] += 1
                    except Diverged:
                        counts["failed"] += 1
                        return
                else:  # trades (from now on: every message is an update), merged when of more than one command
                    counts["streams"] += first
                    counts["updates"] += 1
                    counts["merged"] += message.trades[0].seq != message.trades[-1].seq
                    counts["levels"] += len(message.trades)
                first = False
                counts["messages"] += 1
        except grpc.aio.AioRpcError:
            if not stop.is_set():
                counts["errors"] += 1

    async def read_once_then_stop(kind: str) -> None:
        counts = received[kind]
        messages = aiter(open_call(kind))
        await anext(messages)  # the snapshot, then nothing until the end
        counts["stuck_streams"] += 1
        await stop.wait()
        held = 0
        with contextlib.suppress(TimeoutError, StopAsyncIteration, grpc.aio.AioRpcError):
            while True:
                message = await asyncio.wait_for(anext(messages), 1.0)
                counts["held_messages"] += 1
                held += message.ByteSize()
        counts["held_bytes"] += held
        counts["most_held_bytes"] = max(counts["most_held_bytes"], held)

    tasks = [asyncio.create_task(read(kind)) for kind, count in readers.items() for _ in range(count)]
    stuck_tasks = [asyncio.create_task(read_once_then_stop(kind)) for kind, count in stuck.items()
                   for _ in range(count)]
    print("ready", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, *stuck_tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return received


class Subscribers:
    """The subscriber process: started with the streams open, stopped with its counts."""

    def __init__(self, address: str, readers: dict[str, int], stuck: dict[str, int],
                 niceness: int = READER_NICENESS) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.public_streams", "subscribe", address, json.dumps(readers),
             json.dumps(stuck), "--nice", str(niceness)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
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
    cpu_before, rss_start = _cpu_seconds(node.pid), _rss_bytes(node.pid)
    run = asyncio.run(_stream_entry(cluster.node_addresses, seconds, 17, _keys(cluster), batch=BATCH))
    node_cpu, rss_end = _cpu_seconds(node.pid) - cpu_before, _rss_bytes(node.pid)
    cluster.wait_converged(120)
    _log(f"{label}: {run.rate:,.0f} orders/s ({run.orders:,} orders, errors {run.errors}, aborted {run.aborted}), "
         f"node-1 CPU {node_cpu:.2f} s, RSS {(rss_end - rss_start) / 2**20:+.1f} MiB")
    return {"label": label, "rate": run.rate, "orders": run.orders, "seconds": run.seconds, "errors": run.errors,
            "aborted": run.aborted, "node_cpu_seconds": node_cpu, "rss_start": rss_start, "rss_end": rss_end}


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
    finally:
        delivered = subscribers.stop()
    count = sum(readers.values()) + sum(stuck.values())
    return run | {"subscribers": count, "readers": readers, "stuck": stuck, "delivered": delivered,
                  "rss_before": rss_before, "rss_attached": rss_attached}


def run(seconds: float = 4.0, workdir: Path | None = None, rounds: int = ROUNDS) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-public-streams-"))
    cluster = Cluster(workdir / "cluster", nodes=3, secret="bench-secret")
    _log("public streams: Consul, the Sequencer and 3 nodes")
    runs: dict[str, list[dict]] = {"baseline": [], "attached": [], "stuck": []}
    try:
        cluster.start()
        _entry_run(cluster, min(seconds, 2.0), "warm-up")
        for number in range(1, rounds + 1):
            runs["baseline"].append(_entry_run(cluster, seconds, f"round {number}: without subscribers"))
            runs["attached"].append(_with_subscribers(cluster, seconds, SUBSCRIBERS, {},
                                                      f"round {number}: with {sum(SUBSCRIBERS.values())} readers"))
            runs["stuck"].append(_with_subscribers(cluster, seconds, {}, STUCK,
                                                   f"round {number}: with {sum(STUCK.values())} stuck"))
    except Exception:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
    return runs | {"batch": BATCH, "rounds": rounds}


def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["rate"])


def _cpu_per_order(runs: list[dict]) -> float:
    return statistics.median(r["node_cpu_seconds"] / max(r["orders"], 1) for r in runs)


def table(result: dict) -> str:
    baseline, attached, stuck = _best(result["baseline"]), _best(result["attached"]), _best(result["stuck"])
    lines = [f"public streams: streaming entry (OrderEntryBatch, {result['batch']} orders per message) on 3 nodes with "
             f"public stream subscribers on node 1; best of {result['rounds']} interleaved rounds each",
             f"{'run':<34} {'orders/s':>10} {'ratio':>6} {'node-1 CPU us/order':>20}"]
    base_cpu = _cpu_per_order(result["baseline"])
    for name, runs in (("without subscribers", result["baseline"]), ("with readers", result["attached"]),
                       ("with stuck subscribers", result["stuck"])):
        best = _best(runs)
        lines.append(f"{name:<34} {best['rate']:>10,.0f} {best['rate'] / baseline['rate']:>5.2f}x "
                     f"{_cpu_per_order(runs) * 1e6:>20.1f}")
    verdicts = []
    for run, what in ((attached, "readers"), (stuck, "stuck subscribers")):
        ratio = run["rate"] / baseline["rate"]
        verdicts.append(f"order throughput with {run['subscribers']} {what} >= {TARGET_RATIO}x without: "
                        f"{_verdict(ratio >= TARGET_RATIO)} ({ratio:.3f})")
    def updates_of(kind: str) -> int:
        return sum(r["delivered"]["received"][kind]["updates"] for r in result["attached"])

    readers = sum(SUBSCRIBERS.values())
    all_updates = sum(updates_of(kind) for kind in SUBSCRIBERS)
    for kind, count in SUBSCRIBERS.items():
        updates = updates_of(kind)
        levels = sum(r["delivered"]["received"][kind]["levels"] for r in result["attached"])
        seconds = sum(r["seconds"] for r in result["attached"]) or 1.0
        orders = sum(r["orders"] for r in result["attached"])
        extra_cpu = max(_cpu_per_order(result["attached"]) - base_cpu, 0.0) * orders
        memory = statistics.median((r["rss_attached"] - r["rss_before"]) / max(readers, 1) for r in result["attached"])
        errors = sum(r["delivered"]["received"][kind]["errors"] for r in result["attached"])
        merged = sum(r["delivered"]["received"][kind]["merged"] for r in result["attached"])
        verified = sum(r["delivered"]["received"][kind]["verified"] for r in result["attached"])
        failed = sum(r["delivered"]["received"][kind]["failed"] for r in result["attached"])
        checked = (f"checked by the client's local book: {verified:,} verified, {failed} failed; "
                   if kind == "StreamBook" else "")
        lines.append(f"{kind}: {count} readers: {updates / seconds:,.0f} updates/s delivered in all "
                     f"({updates / seconds / max(count, 1):,.1f}/s each, {levels / max(updates, 1):.1f} levels or "
                     f"trades per message, {merged / max(updates, 1):.0%} merged), errors {errors}; {checked}"
                     f"node-1 CPU per update per subscriber "
                     f"{extra_cpu / max(all_updates, 1) * 1e6:.0f} us (the readers' extra CPU per order over the "
                     f"baseline's, for the orders of those runs, over every kind's updates); node-1 memory per "
                     f"reader {memory / 1024:.1f} KiB (RSS when attached)")
    reader_cpu = sum(r["delivered"]["cpu_seconds"] for r in result["attached"])
    lines.append(f"the readers' own process (nice {READER_NICENESS}: readers belong on other machines; one that falls "
                 f"behind gets merged updates, above): {reader_cpu / seconds:.0%} of a core")
    for kind in STUCK:
        got = [r["delivered"]["received"][kind] for r in result["stuck"]]
        streams = max(sum(g["stuck_streams"] for g in got), 1)
        memory = statistics.median((r["rss_attached"] - r["rss_before"]) / sum(STUCK.values())
                                   for r in result["stuck"])
        lines.append(f"{kind}: {STUCK[kind]} subscribers that stopped reading while {stuck['orders']:,} orders "
                     f"flowed (best round): what each stream held when read again: "
                     f"{sum(g['held_messages'] for g in got) / streams:.1f} messages, "
                     f"{sum(g['held_bytes'] for g in got) / streams / 1024:.1f} KiB on average, at most "
                     f"{max(g['most_held_bytes'] for g in got) / 1024:.1f} KiB; node-1 memory per subscriber "
                     f"{memory / 1024:.1f} KiB (RSS when attached)")
    return "\n".join(lines + verdicts)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.public_streams subscribe ADDRESS READERS STUCK`: the subscriber process (prints its counts as
    JSON on SIGTERM); without arguments: the section alone."""
    parser = argparse.ArgumentParser(prog="python -m bench.public_streams")
    commands = parser.add_subparsers(dest="command")
    subscribe = commands.add_parser("subscribe")
    subscribe.add_argument("address")
    subscribe.add_argument("readers", type=json.loads)
    subscribe.add_argument("stuck", type=json.loads)
    subscribe.add_argument("--market", default="")
    subscribe.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by this much")
    args = parser.parse_args(argv)
    if args.command == "subscribe":
        os.nice(args.nice)
        print(json.dumps(asyncio.run(_subscribe(args.address, args.market, args.readers, args.stuck))), flush=True)
        return 0
    result = run()
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
