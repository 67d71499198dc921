"""The chaos checker's judgement (devtools/chaos/checks.py) on crafted ledgers and logs, no processes: what it must
call a violation (found by an audit, 2026-12-03: each of these passed), and what it must not."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from devtools.chaos import checks as checks_module
from devtools.chaos.checks import Checks
from devtools.chaos.records import ChangeRecord, Config, Ledger, OrderRecord, Report
from devtools.chaos.workload import Clients
from devtools.local_cluster import Cluster
from devtools.verify import replay
from exchange.cluster_common import parse_markets
from exchange.node.order_messages import create_order_response
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

MARKETS = "BTC-USD,ETH-USD"
SYMBOLS = ["BTC-USD", "ETH-USD"]


class Process:
    running = True

    def signal(self, number: int) -> None:
        pass


class FakeCluster:
    """What Checks touches of a Cluster: markets, no HA, every process running, a fixed converged view."""

    markets = MARKETS
    ha = False
    netns = None
    sequencers: list[Process] = []

    def __init__(self, views: dict[str, tuple[int, int]] | None = None) -> None:
        self.nodes = [Process(), Process(), Process()]
        self.views = views or {}

    def leader_index(self) -> int:
        return 0

    def wait_converged(self, timeout: float, nodes: list[int]) -> dict[str, tuple[int, int]]:
        return dict(self.views)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"


class RefusingStub:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def CreateOrder(self, request: Any, **_: Any) -> Any:  # noqa: N802 - the gRPC method's name
        raise FakeRpcError(self.code)


def new_order(market: str, coid: str, side: types_pb2.Side = types_pb2.BUY, size: int = 10, price: int = 100,
              account: str = "trader-1", order_type: types_pb2.OrderType = types_pb2.LIMIT,
              stp: types_pb2.SelfTradePrevention = types_pb2.SELF_TRADE_PREVENTION_UNSPECIFIED,
              ref: int = 1) -> types_pb2.Command:
    return types_pb2.Command(
        market=market, client_order_id=coid, account=account, origin_node="node-1", origin_ref=ref,
        new_order=types_pb2.NewOrderCommand(side=side, order_type=order_type, size=size, price=price,
                                            self_trade_prevention=stp))


def log_of(commands: list[types_pb2.Command]) -> list[types_pb2.SequencedCommand]:
    return [types_pb2.SequencedCommand(market=c.market, seq=seq, command=c.SerializeToString())
            for seq, c in enumerate(commands, start=1)]


def run_check_log(monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
                  commands: dict[str, list[types_pb2.Command]]) -> Report:
    """Runs Checks.check_log as the checker does after settling, against the given log (the nodes converged on it)."""
    logs = {market: log_of(commands.get(market, [])) for market in SYMBOLS}
    monkeypatch.setattr(checks_module, "read_log", lambda cluster, market: logs[market])
    monkeypatch.setattr(checks_module, "market_data_differences", lambda cluster, result: [])
    result = replay(parse_markets(MARKETS), logs)
    views = {m: (result.engine.last_seq(m), result.engine.checksum(m)) for m in SYMBOLS}
    cluster = FakeCluster(views)
    checks = Checks(cast(Cluster, cluster), ledger, cast(Clients, object()), SYMBOLS, settle_timeout=1)
    report = Report(seed=1)
    checks.check_log(views, report)
    report.violations = list(ledger.violations)
    return report


def acked(ledger: Ledger, request: pb.CreateOrderRequest, logged: types_pb2.Command, seq: int,
          account: str = "trader-1") -> OrderRecord:
    """A client's order answered OK, the answer being exactly what the node builds from the logged command."""
    record = ledger.add_order("c0", account, request)
    market_log = {logged.market: [logged]}
    result = replay(parse_markets(MARKETS), {m: log_of(market_log.get(m, [])) for m in SYMBOLS})
    record.response = create_order_response(logged, seq, result.events[logged.market][seq], False)
    record.attempts.append((0, "OK"))
    record.final = "OK"
    return record


def quiet_ledger() -> Ledger:
    return Ledger(out=lambda _: None)


# -- 1. an acknowledged order is in the log as the client sent it, and never ABORTED ----------------------------

REQUEST = pb.CreateOrderRequest(market="BTC-USD", side=types_pb2.SELL, size=10, limit_price=100,
                                order_type=types_pb2.LIMIT, client_order_id="s1-c0-1",
                                self_trade_prevention=types_pb2.CANCEL_MAKER)
FAITHFUL: dict[str, Any] = dict(side=types_pb2.SELL, size=10, price=100, account="trader-1", order_type=types_pb2.LIMIT,
                stp=types_pb2.CANCEL_MAKER)


@pytest.mark.parametrize("changed", [
    {"side": types_pb2.BUY},           # e.g. a sign-of-size or side-enum bug on the node
    {"size": 7},
    {"price": 99},
    {"order_type": types_pb2.IOC},
    {"stp": types_pb2.CANCEL_TAKER},
    {"account": "trader-2"},           # the order numbered as another account's
], ids=["side", "size", "price", "order_type", "stp", "account"])
def test_acknowledged_order_logged_differently_from_the_request_is_a_violation(
        monkeypatch: pytest.MonkeyPatch, changed: dict[str, Any]) -> None:
    ledger = quiet_ledger()
    logged = new_order("BTC-USD", REQUEST.client_order_id, **{**FAITHFUL, **changed})
    acked(ledger, REQUEST, logged, 1)
    report = run_check_log(monkeypatch, ledger, {"BTC-USD": [logged]})
    assert not report.ok, f"the log holds {changed} for an order the client sent otherwise, and the run is OK"


def test_acknowledged_order_logged_in_another_market_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client asked for ETH-USD; the node numbered (and answered) it in BTC-USD."""
    ledger = quiet_ledger()
    request = pb.CreateOrderRequest()
    request.CopyFrom(REQUEST)
    request.market = "ETH-USD"
    logged = new_order("BTC-USD", request.client_order_id, **FAITHFUL)
    acked(ledger, request, logged, 1)
    report = run_check_log(monkeypatch, ledger, {"BTC-USD": [logged]})
    assert not report.ok, "an ETH-USD order placed on BTC-USD passes"


def test_aborted_order_in_a_fault_free_run_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT 3: with no fault no order is ABORTED; docs/chaos.md: "Every seed: zero ABORTED". The checker only
    counts ABORTED (Clients.count_failure) and treats it as a definite refusal, even in a run without faults."""
    ledger = quiet_ledger()
    clients = object.__new__(Clients)
    clients.config, clients.ledger, clients.stats = Config(seed=1, faults=()), ledger, ledger.stats
    record = ledger.add_order("c0", "trader-1", REQUEST)
    clients.place([cast(Any, RefusingStub(grpc.StatusCode.ABORTED))], record, 0, attempts=1)
    assert record.final == "ABORTED" and ledger.stats.get("aborted") == 1
    report = run_check_log(monkeypatch, ledger, {})
    assert not report.ok, "an ABORTED order in a fault-free run passes"


# -- 2. an order still ambiguous after settling --------------------------------------------------------------------


class AmbiguousClients:
    """Settling's last attempts, answered DEADLINE_EXCEEDED by every node although the cluster is whole."""

    def shared_stubs(self, account: str) -> Any:
        return None

    def place(self, stubs: Any, record: OrderRecord, node: int, attempts: int, **_: Any) -> None:
        record.attempts += [((node + i) % 3, "DEADLINE_EXCEEDED") for i in range(attempts)]
        record.final = "AMBIGUOUS"


def test_order_unresolved_after_settling_is_a_violation() -> None:
    ledger = quiet_ledger()
    for number in range(50):
        record = ledger.add_order("c0", "trader-1", pb.CreateOrderRequest(client_order_id=f"c0-{number}"))
        record.final = "AMBIGUOUS"
    cluster = FakeCluster({"BTC-USD": (0, 0), "ETH-USD": (0, 0)})
    checks = Checks(cast(Cluster, cluster), ledger, cast(Clients, AmbiguousClients()), SYMBOLS, settle_timeout=1)
    report = Report(seed=1)
    checks.settle(report)
    report.violations = list(ledger.violations)
    assert ledger.stats.get("unresolved") == 50
    assert not report.ok, "50 orders no node would answer, after every fault healed and the nodes converged, pass"


# -- 3. acknowledged cancels and amends ----------------------------------------------------------------------------


def test_cancel_acknowledged_but_rejected_by_the_log_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node answered OK (cancelled_size 0) for a cancel that the log's replay rejects (ORDER_NOT_FOUND):
    the contract says NOT_FOUND. check_ledger sums the replay's OrderCancelled events (none: 0) and compares."""
    ledger = quiet_ledger()
    cancel = types_pb2.Command(market="BTC-USD", cancel_order=types_pb2.CancelOrderCommand(order_id=99),
                               account="trader-1", origin_node="node-1", origin_ref=1)
    change = ChangeRecord("cancel", 0, "BTC-USD", 99, code="OK",
                          response=pb.CancelOrderResponse(market="BTC-USD", order_id=99, seq=1, cancelled_size=0))
    ledger.add_change(change)
    report = run_check_log(monkeypatch, ledger, {"BTC-USD": [cancel]})
    assert not report.ok, "an acknowledged cancel that the log rejects passes"


def test_amend_acknowledged_but_rejected_by_the_log_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the amend answer's trades were compared, not whether the replay rejected the amend (here the order
    does not exist at all)."""
    ledger = quiet_ledger()
    amend = types_pb2.Command(market="BTC-USD", amend_order=types_pb2.AmendOrderCommand(order_id=99, new_size=5),
                              account="trader-1", origin_node="node-1", origin_ref=1)
    change = ChangeRecord("amend", 0, "BTC-USD", 99, code="OK", response=pb.AmendOrderResponse(
        market="BTC-USD", order_id=99, seq=1, price=100, remaining_size=5, priority_kept=True))
    ledger.add_change(change)
    report = run_check_log(monkeypatch, ledger, {"BTC-USD": [amend]})
    assert not report.ok, "an acknowledged amend of an order the log never had passes"


# -- controls: the checker does catch these (sanity of the harness above) ---------------------------------------


def test_control_faithful_acknowledged_order_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    logged = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL)
    acked(ledger, REQUEST, logged, 1)
    assert run_check_log(monkeypatch, ledger, {"BTC-USD": [logged]}).ok


def test_control_acknowledged_order_missing_from_the_log_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    logged = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL)
    acked(ledger, REQUEST, logged, 1)
    assert not run_check_log(monkeypatch, ledger, {}).ok


def test_control_same_market_duplicate_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    logged = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL)
    acked(ledger, REQUEST, logged, 1)
    twin = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL, ref=2)
    assert not run_check_log(monkeypatch, ledger, {"BTC-USD": [logged, twin]}).ok


def test_control_refused_order_in_the_log_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    record = ledger.add_order("c0", "trader-1", REQUEST)
    record.final = "INVALID_ARGUMENT"
    logged = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL)
    assert not run_check_log(monkeypatch, ledger, {"BTC-USD": [logged]}).ok


@pytest.mark.parametrize(("expected", "final"), [("", "INVALID_ARGUMENT"), ("", "NOT_FOUND"),
                                                 ("NOT_FOUND", "INVALID_ARGUMENT")])
def test_an_order_refused_otherwise_than_the_workload_made_it_is_a_violation(
    monkeypatch: pytest.MonkeyPatch, expected: str, final: str,
) -> None:
    """A valid order refused as bad input (a node answering "unknown market" while the markets record is written
    back after a Consul restart, say) passed: only its absence from the log was checked."""
    ledger = quiet_ledger()
    record = ledger.add_order("c0", "trader-1", REQUEST, expected)
    record.attempts.append((0, final))
    record.final = final
    assert not run_check_log(monkeypatch, ledger, {}).ok


def test_a_bad_order_accepted_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    logged = new_order("BTC-USD", REQUEST.client_order_id, **FAITHFUL)
    acked(ledger, REQUEST, logged, 1).expected_error = "INVALID_ARGUMENT"
    assert not run_check_log(monkeypatch, ledger, {"BTC-USD": [logged]}).ok


def test_an_order_refused_as_the_workload_made_it_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = quiet_ledger()
    record = ledger.add_order("c0", "trader-1", REQUEST, "NOT_FOUND")
    record.attempts.append((0, "NOT_FOUND"))
    record.final = "NOT_FOUND"
    assert run_check_log(monkeypatch, ledger, {}).ok
