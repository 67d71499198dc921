"""The chaos checker's replay fault: genuine log entries broadcast again, then forged ones.

Genuine entries (shuffled, duplicated, delayed) must be accepted by every node and change nothing a
replica would not have done anyway; every forgery (altered bytes, wrong sequence or market, fabricated
commands, a missing cluster token) must be refused with INVALID_ARGUMENT or PERMISSION_DENIED.
"""

from __future__ import annotations

import random
import time

import grpc

from devtools.chaos.records import AMBIGUOUS, CALL_TIMEOUT, PRICES, Ledger
from devtools.local_cluster import Cluster
from devtools.verify import read_log
from exchange.cluster_common import peer_token
from exchange.shared.wire import TOKEN_HEADER
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

Metadata = tuple[tuple[str, str], ...]


class Replays:
    def __init__(self, seed: int, cluster: Cluster, ledger: Ledger, markets: list[str],
                 stubs: list[exchange_pb2_grpc.ExchangeNodeStub]) -> None:
        self.seed = seed
        self.cluster = cluster
        self.ledger = ledger
        self.stats = ledger.stats
        self.markets = markets
        self.stubs = stubs

    def run(self, number: int, hold: float) -> None:
        """Genuine log entries sent again (shuffled, duplicated, delayed), then forged ones (refused)."""
        rng = random.Random(f"{self.seed}-replay-{number}")
        metadata = ((TOKEN_HEADER, peer_token(self.cluster.secret.encode())),)
        logs = {market: read_log(self.cluster, market) for market in self.markets}
        genuine = [entry for entries in logs.values() for entry in entries[-300:]]
        if not genuine:
            return
        deadline = time.monotonic() + hold
        rounds = 0
        while time.monotonic() < deadline or rounds == 0:
            rounds += 1
            batch = rng.sample(genuine, min(len(genuine), 60)) + rng.choices(genuine, k=30)
            rng.shuffle(batch)
            for index, stub in enumerate(self.stubs):
                for start in range(0, len(batch), 15):
                    request = pb.BroadcastOrderRequest(origin_node="chaos-replayer", commands=batch[start:start + 15])
                    self.genuine(stub, index, request, metadata)
            time.sleep(rng.uniform(0.1, 0.6))
        for label, request, with_token in self.forgeries(rng, logs):
            for index, stub in enumerate(self.stubs):
                try:
                    stub.BroadcastOrder(request, metadata=metadata if with_token else (), timeout=CALL_TIMEOUT,
                                        wait_for_ready=True)
                except grpc.RpcError as error:
                    if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
                        self.stats.add("forged_refused")
                        continue
                    self.ledger.violation(f"forged broadcast ({label}) to node-{index + 1}: {error.code().name} "
                                          f"{error.details()}")
                    continue
                self.ledger.violation(f"node-{index + 1} ACCEPTED a forged broadcast ({label})")

    def genuine(self, stub: exchange_pb2_grpc.ExchangeNodeStub, index: int, request: pb.BroadcastOrderRequest,
                metadata: Metadata) -> None:
        """Sends genuine entries again. A transport failure (a connection that died while a fault lasted)
        is retried; a node that keeps failing, or refuses the content, is a violation."""
        for attempt in range(4):
            try:
                stub.BroadcastOrder(request, metadata=metadata, timeout=CALL_TIMEOUT, wait_for_ready=True)
                self.stats.add("replayed", len(request.commands))
                return
            except grpc.RpcError as error:
                if error.code() in AMBIGUOUS and attempt < 3:
                    time.sleep(0.5)
                    continue
                self.ledger.violation(f"node-{index + 1} refused genuine replayed entries: "
                                      f"{error.code().name} {error.details()}")
                return

    def forgeries(self, rng: random.Random, logs: dict[str, list[types_pb2.SequencedCommand]]
                  ) -> list[tuple[str, pb.BroadcastOrderRequest, bool]]:
        """(label, request, whether to send the cluster token) for each forgery, from one genuine entry."""
        market = rng.choice([m for m in self.markets if logs[m]])
        entries = logs[market]
        entry = rng.choice(entries)
        current = entries[-1].seq

        def copy(**changes: object) -> types_pb2.SequencedCommand:
            forged = types_pb2.SequencedCommand()
            forged.CopyFrom(entry)
            for name, value in changes.items():
                setattr(forged, name, value)
            return forged

        altered = bytearray(entry.command)
        altered[rng.randrange(len(altered))] ^= 0xFF
        command = types_pb2.Command.FromString(entry.command)
        if command.WhichOneof("kind") == "new_order":
            command.new_order.size += 1
        else:
            command.client_order_id = "forged"
        fabricated = types_pb2.Command(
            market=market, new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT,
                                                               size=1, price=PRICES[1] + 50), origin_node="chaos")
        other = next((m for m in self.markets if m != market), "NO-SUCH-MARKET")
        cases = [
            ("altered command bytes", copy(command=bytes(altered))),
            ("re-encoded altered command", copy(command=command.SerializeToString())),
            ("wrong seq", copy(seq=entry.seq + rng.randint(1, 5))),
            ("next seq, copied MAC", copy(seq=current + 1)),
            ("far-ahead seq", copy(seq=current + 1_000_000)),
            ("wrong market", copy(market=other)),
            ("unknown market", copy(market="NO-SUCH-MARKET")),
            ("fabricated command, random MAC", types_pb2.SequencedCommand(
                market=market, seq=current + 1, command=fabricated.SerializeToString(), mac=rng.randbytes(32))),
            ("fabricated command, no MAC", types_pb2.SequencedCommand(
                market=market, seq=current + 1, command=fabricated.SerializeToString())),
        ]
        requests = [(label, pb.BroadcastOrderRequest(origin_node="chaos-forger", commands=[forged]), True)
                    for label, forged in cases]
        requests.append(("genuine entry followed by a forged one", pb.BroadcastOrderRequest(
            origin_node="chaos-forger", commands=[entry, cases[3][1]]), True))
        requests.append(("genuine entry without the cluster token", pb.BroadcastOrderRequest(
            origin_node="chaos-forger", commands=[entry]), False))
        return requests
