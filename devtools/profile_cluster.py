"""Profile a local cluster under load: where each order's CPU goes, per process and per step.

    python -m devtools.profile_cluster --load unary --in-flight 8 --seconds 10
    python -m devtools.profile_cluster --load stream --batch 100 --seconds 10 [--no-auth] [--ha] [--native]

Starts a cluster (devtools/local_cluster.py) in a temporary directory, runs the bench's load against it
(bench/cluster_load.py: unary CreateOrder at N in flight, or streaming entry at one order or a batch per
message), and while the load runs records every Sequencer and node process with py-spy (`--gil`: samples
of the thread holding the GIL, so Python's own work; `--native` adds grpc's C frames under it). It prints each
process's CPU per order (from /proc, over the profiled window) and splits it over the product's frames: each
sample goes to its innermost frame in the project's packages (exchange/, sequencer/, discovery/), so a
protobuf parse or a grpc write counts for the product function that asked for it; samples with no product
frame (the event loop, grpc's own callbacks) go to their innermost frame. A share of samples times the
process's CPU per order gives microseconds per order, comparable between runs.

py-spy comes with the development dependencies (`make install`). Orders per second fall while py-spy samples
(more so with --native, which pauses each process to read its C frames): read the shares, and the rates of
`make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.cluster_load import _cpu_seconds, _drive, _keys, _stream_entry
from devtools.local_cluster import Cluster

PRODUCT = ("exchange/", "sequencer/", "discovery/")
SKIP = ("exchange/runtime.py", "exchange/grpc_metrics.py")  # wrappers every call passes through


def _frame_key(frame: str) -> str:
    """'function (path/file.py:line)' -> 'path/file.py:function'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for root in PRODUCT:  # py-spy names a file relative to the working directory, or by its absolute path
        if path.startswith(root):
            break
        index = path.rfind("/" + root)
        if index >= 0:
            path = path[index + 1:]
            break
    else:
        path = path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path
    return f"{path}:{name}"


def attribute(raw: str) -> Counter[str]:
    """Collapsed stacks (py-spy --format raw: 'frame;frame;... count') -> samples per attributed frame."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = [_frame_key(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        product = [f for f in frames if f.startswith(PRODUCT) and not f.startswith(SKIP)]
        counts[product[-1] if product else (frames[-1] if frames else "?")] += int(number)
    return counts


def _record(pid: int, seconds: float, output: Path, native: bool) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration",
               str(int(seconds)), "--rate", "200", "--format", "raw", "--gil", "--output", str(output)]
    # --native pauses the process for each sample (py-spy cannot unwind C frames of a running one)
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _load(cluster: Cluster, args: argparse.Namespace, seconds: float) -> int:
    """Runs the load for `seconds`; returns the orders answered."""
    keys = _keys(cluster)
    if args.load == "unary":
        result = asyncio.run(_drive(cluster.node_addresses, args.in_flight, seconds, 1, keys))
        return result.calls
    run = asyncio.run(_stream_entry(cluster.node_addresses, seconds, 7, keys, batch=args.batch))
    return run.orders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=("unary", "stream"), default="unary")
    parser.add_argument("--in-flight", type=int, default=8, help="unary: calls in flight")
    parser.add_argument("--batch", type=int, default=1, help="stream: orders per message")
    parser.add_argument("--seconds", type=float, default=10.0, help="profiled seconds")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--no-auth", action="store_true", help="nodes without API keys (--insecure-no-auth)")
    parser.add_argument("--ha", action="store_true", help="the Sequencer's HA mode (3 Consul servers, 2 replicas)")
    parser.add_argument("--native", action="store_true", help="py-spy --native: grpc's C frames as well")
    parser.add_argument("--top", type=int, default=25, help="frames shown per process")
    parser.add_argument("--node-arg", action="append", default=[], help="an extra argument for every node")
    parser.add_argument("--keep", type=Path, help="a directory to keep each process's collapsed stacks in")
    args = parser.parse_args(argv)
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        parser.error("py-spy is not installed in this virtualenv: make install")
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        workdir = Path(tmp)
        extra = ["--insecure-no-auth", *args.node_arg] if args.no_auth else list(args.node_arg)
        cluster = Cluster(workdir / "cluster", nodes=args.nodes, secret="profile-secret", extra_node_args=extra,
                          ha=args.ha)
        try:
            cluster.start()
            processes = [p for p in cluster.processes() if p.pid is not None]
            orders = 0

            def load() -> None:
                nonlocal orders
                orders = _load(cluster, args, args.seconds + 2.0)

            worker = threading.Thread(target=load)
            worker.start()
            time.sleep(1.5)  # warm up: connections, streams, the books' first levels
            cpu_before = {p.name: _cpu_seconds(p.pid) for p in processes}
            counted_before = sum(dict(cluster.status(i).counters)["orders"] for i in range(len(cluster.nodes)))
            spies = {p.name: _record(p.pid, args.seconds, workdir / f"{p.name}.txt", args.native)  # type: ignore[arg-type]
                     for p in processes}
            for spy in spies.values():
                spy.wait()
            cpu = {p.name: _cpu_seconds(p.pid) - cpu_before[p.name] for p in processes}
            counted = sum(dict(cluster.status(i).counters)["orders"] for i in range(len(cluster.nodes)))
            counted -= counted_before
            worker.join()
            per_order = {name: value * 1e6 / max(counted, 1) for name, value in cpu.items()}
            what = (f"unary, {args.in_flight} in flight" if args.load == "unary"
                    else f"streaming, {args.batch} per message")
            print(f"{what}, {args.nodes} nodes{' HA' if args.ha else ''}"
                  f"{' without keys' if args.no_auth else ''}: {counted / args.seconds:,.0f} orders/s in the "
                  f"profiled {args.seconds:.0f} s ({orders:,} answered in the whole run); CPU per order "
                  f"{sum(per_order.values()):,.0f} us: "
                  + ", ".join(f"{name} {value:,.0f}" for name, value in per_order.items()))
            for name, spy in spies.items():
                path = workdir / f"{name}.txt"
                if spy.returncode != 0 or not path.exists():
                    print(f"\n{name}: py-spy failed ({spy.returncode})")
                    continue
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, args.keep / path.name)
                counts = attribute(path.read_text())
                total = sum(counts.values()) or 1
                print(f"\n{name}: {per_order[name]:,.1f} us CPU per order; {total:,} samples holding the GIL")
                print(f"  {'share':>6} {'us/order':>8}  frame")
                for frame, number in counts.most_common(args.top):
                    share = number / total
                    print(f"  {share:6.1%} {share * per_order[name]:8.1f}  {frame}")
        except BaseException:
            print(cluster.logs(), file=sys.stderr)
            raise
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
