"""Memory and restart time of one Sequencer as its log grows: `python -m bench.sequencer_memory` (not in CI).

Sends --orders new orders, each with its own client_order_id, straight to a Sequencer process (Sequence
requests of --batch commands, as one node would), and at each checkpoint reports the process's resident memory
(VmRSS, and its peak VmHWM), the size of its files, then SIGKILLs it, starts it again and times it until it
answers GetSequence at the same position, and until it grants again. Both backends by default: the embedded
SQLite log and the replicated log (one replica on a Consul dev agent: the restart then includes the old
session's end, the lock-delay and the takeover). A retried client_order_id within the window must come back a
duplicate after the last restart.

--code DIR runs the Sequencer of another checkout (e.g. main's, with its gRPC stubs generated) the same way, for
a before/after comparison in one run: a Sequencer without --dedup-window and --log is given neither.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from devtools.consul_agent import ConsulDevAgent
from devtools.local_cluster import ROOT, serving, wait_until
from devtools.ports import free_port
from exchange.cluster_common import token_metadata
from exchange.runtime import SERVICE_GRPC_ENV
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc, types_pb2

SECRET = "memory-bench-secret"
MARKET = "BTC-USD"


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) // 1024
    return values


def _size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


class Sequencer:
    """One Sequencer process (of this checkout or of `code`), restartable on the same data."""

    def __init__(self, workdir: Path, consul: str, log: str, window: int, tail: int, code: Path | None) -> None:
        self.workdir = workdir
        self.address = f"127.0.0.1:{free_port()}"
        self.code = code or ROOT
        args = ["--listen", self.address, "--data-dir", str(workdir / "data"), "--markets", "BTC-USD,ETH-USD"]
        if code is None:
            args += ["--log", log, "--dedup-window", str(window), "--consul-tail", str(tail)]
        self.command = [sys.executable, "-m", "sequencer.main", *args]
        self.env = {**os.environ, **SERVICE_GRPC_ENV, "EXCHANGE_CLUSTER_SECRET": SECRET, "CONSUL_HTTP_ADDR": consul,
                    "PYTHONPATH": str(self.code)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.workdir / "sequencer.log", "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.code, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _command(number: int) -> types_pb2.Command:
    return types_pb2.Command(
        market=MARKET, client_order_id=f"order-{number:09d}-abcdef", origin_node="bench", origin_ref=number,
        new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY if number % 2 else types_pb2.SELL,
                                            order_type=types_pb2.LIMIT, size=1 + number % 5, price=900 + number % 200))


def _sequence(stub: sequencer_pb2_grpc.SequencerStub, applied: int, first: int, count: int) -> int:
    response = stub.Sequence(sequencer_pb2.SequenceRequest(
        market=MARKET, applied_seq=applied, node_id="bench",
        commands=[_command(number) for number in range(first, first + count)]),
        timeout=120, metadata=token_metadata(SECRET.encode()))
    assert response.granted, "a request stating the current sequence is granted"
    return response.current_seq


def _restart(sequencer: Sequencer, stub: sequencer_pb2_grpc.SequencerStub, position: int) -> tuple[float, float]:
    """SIGKILL, start again: seconds until it answers GetSequence at `position`, and until it grants."""
    sequencer.kill()
    started = time.monotonic()
    sequencer.start()

    def answers() -> bool:
        try:
            return stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=MARKET), timeout=1).current_seq == position
        except grpc.RpcError:
            return False

    wait_until(answers, 120, "the Sequencer to answer again", interval=0.01)
    answered = time.monotonic() - started
    probe = types_pb2.Command(market="ETH-USD", origin_node="probe", origin_ref=time.monotonic_ns(),
                              new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT,
                                                                  size=1, price=100))

    def grants() -> bool:
        try:
            current = stub.GetSequence(sequencer_pb2.GetSequenceRequest(market="ETH-USD"), timeout=1).current_seq
            return stub.Sequence(sequencer_pb2.SequenceRequest(market="ETH-USD", applied_seq=current, node_id="probe",
                                                               commands=[probe]), timeout=5,
                                 metadata=token_metadata(SECRET.encode())).granted
        except grpc.RpcError:
            return False

    wait_until(grants, 120, "the Sequencer to grant again", interval=0.01)
    return answered, time.monotonic() - started


def run(log: str, orders: int, checkpoints: list[int], batch: int, window: int, tail: int,
        code: Path | None) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix=f"seq-memory-{log}-"))
    consul = ConsulDevAgent(data_dir=workdir / "consul")
    consul.start()
    sequencer = Sequencer(workdir, consul.address, log, window, tail, code)
    rows = []
    try:
        sequencer.start()
        wait_until(lambda: serving(sequencer.address), 60, "the Sequencer to serve")
        channel = grpc.insecure_channel(sequencer.address)
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        wait_until(lambda: _granting(stub), 60, "the Sequencer to grant")
        applied, sent, started = 0, 0, time.monotonic()
        for checkpoint in checkpoints:
            while sent < checkpoint:
                count = min(batch, checkpoint - sent)
                applied = _sequence(stub, applied, sent + 1, count)
                sent += count
            rate = sent / (time.monotonic() - started)
            assert sequencer.process is not None
            memory = _status(sequencer.process.pid)
            answered, granted = _restart(sequencer, stub, applied)
            after = _status(sequencer.process.pid)
            rows.append({"backend": log if code is None else f"{code.name} ({log})", "orders": sent,
                         "rss_mb": memory["VmRSS"], "peak_mb": memory["VmHWM"], "disk_mb": _size_mb(workdir / "data"),
                         "answers_s": answered, "grants_s": granted, "rss_after_restart_mb": after["VmRSS"],
                         "orders_per_s": rate})
            print(f"{rows[-1]['backend']}: {sent:,} orders ({rate:,.0f}/s): RSS {memory['VmRSS']} MB (peak "
                  f"{memory['VmHWM']}), files {rows[-1]['disk_mb']:.0f} MB; SIGKILLed, it answered again after "
                  f"{answered:.2f} s and granted after {granted:.2f} s; RSS after the restart {after['VmRSS']} MB",
                  file=sys.stderr, flush=True)
            started = time.monotonic() - sent / rate
        recent = _command(sent)
        retry = stub.Sequence(sequencer_pb2.SequenceRequest(
            market=MARKET, applied_seq=applied, node_id="bench", commands=[recent]), timeout=30,
            metadata=token_metadata(SECRET.encode()))
        assert retry.granted and retry.assignments[0].duplicate, "a retry within the window is a duplicate"
        channel.close()
    finally:
        sequencer.stop()
        consul.stop()
    return rows


def _granting(stub: sequencer_pb2_grpc.SequencerStub) -> bool:
    try:
        return stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=MARKET), timeout=1).role in ("leader", "")
    except grpc.RpcError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sequencer_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,1000000", help="comma-separated order counts")
    parser.add_argument("--batch", type=int, default=1_000, help="commands per Sequence request")
    parser.add_argument("--log", choices=["sqlite", "consul", "both"], default="both")
    parser.add_argument("--dedup-window", type=int, default=200_000)
    parser.add_argument("--consul-tail", type=int, default=20_000)
    parser.add_argument("--code", type=Path, default=None, help="run another checkout's Sequencer (embedded)")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.orders} | {args.orders})
    logs = ["sqlite", "consul"] if args.log == "both" and args.code is None else [
        "sqlite" if args.code is not None else args.log]
    rows = [row for log in logs for row in run(log, args.orders, checkpoints, args.batch, args.dedup_window,
                                               args.consul_tail, args.code)]
    print(f"{'Sequencer':<22} {'orders':>10} {'RSS MB':>7} {'peak MB':>8} {'files MB':>9} {'answers again':>14} "
          f"{'grants again':>13} {'RSS after':>10}")
    for row in rows:
        print(f"{row['backend']:<22} {row['orders']:>10,} {row['rss_mb']:>7} {row['peak_mb']:>8} "
              f"{row['disk_mb']:>9.0f} {row['answers_s']:>13.2f}s {row['grants_s']:>12.2f}s "
              f"{row['rss_after_restart_mb']:>10}")
    print(f"(dedup window {args.dedup_window:,} commands per market; Consul tail {args.consul_tail:,} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
