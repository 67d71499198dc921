"""The chaos checker's settling (devtools/chaos/checks.py), without a cluster: what it sends again, and as whom."""

from __future__ import annotations

from typing import Any, cast

from devtools.chaos.checks import Checks
from devtools.chaos.records import Ledger, OrderRecord, Report
from devtools.chaos.workload import Clients
from devtools.local_cluster import Cluster
from exchange.v1 import exchange_pb2 as pb


class Process:
    def signal(self, number: int) -> None:
        pass


class FakeCluster:
    sequencers: list[Process] = []
    nodes = [Process(), Process(), Process()]
    netns = None


class RecordingClients:
    """Clients whose calls are recorded: `place` notes the stubs' account, and answers as the cluster would."""

    probe_stubs = "stubs of alice"

    def __init__(self) -> None:
        self.placed: list[tuple[str, str]] = []  # (client_order_id, the account of the stubs used)

    def shared_stubs(self, account: str) -> Any:
        return f"stubs of {account}"

    def place(self, stubs: Any, record: OrderRecord, node: int, **_: Any) -> None:
        self.placed.append((record.coid, stubs.removeprefix("stubs of ")))
        record.final = "OK"


def test_settling_sends_every_ambiguous_order_again_with_the_key_that_placed_it() -> None:
    """chaos seed 2405: a client's order, ambiguous at every attempt, was sent again as the probes' account, so the
    exchange rightly placed it as that account's new order: the log held its client_order_id twice."""
    ledger = Ledger(out=lambda _: None)
    for client, account, coid, final in [("c2", "trader-3", "c2-1", "AMBIGUOUS"), ("c0", "trader-1", "c0-1", "OK"),
                                         ("probe", "alice", "probe-1", "AMBIGUOUS")]:
        ledger.add_order(client, account, pb.CreateOrderRequest(client_order_id=coid)).final = final
    ledger.expired.set()  # past the time limit: settling stops after sending them again
    clients = RecordingClients()
    checks = Checks(cast(Cluster, FakeCluster()), ledger, cast(Clients, clients), ["BTC-USD"], settle_timeout=1)
    assert checks.settle(Report(seed=2405)) == {}
    assert clients.placed == [("c2-1", "trader-3"), ("probe-1", "alice")]
