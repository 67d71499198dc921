"""The chaos checker's end-of-run checks: settle the cluster, then compare everything with the log.

`Checks.settle` heals every fault, retries the orders whose every attempt was ambiguous and waits until
the nodes converge; `check_log` replays the Sequencer's log through a fresh engine (gap-free, equal
checksums, nothing numbered twice); `check_ledger` compares every answer a client was given with that
replay; `check_processes` wants every process running and no log holding a traceback.
"""

from __future__ import annotations

import re
import signal
from collections import Counter

import grpc

from devtools.chaos.records import AMBIGUOUS_NAMES, CALL_TIMEOUT, DEFINITE_FAILURES, MAX_ATTEMPTS, Ledger, Report
from devtools.chaos.workload import Clients
from devtools.local_cluster import Cluster, wait_until
from devtools.verify import Replay, market_data_differences, read_log, read_replica_log, replay
from exchange import engine as eng
from exchange.cluster_common import parse_markets
from exchange.node import order_messages
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

LOG_ALARMS = re.compile(r"Traceback|CRITICAL")
# grpcio logs this (with a traceback) when a handler finishes after its client gave up (deadline passed,
# e.g. while the node was SIGSTOPped): the answer cannot be sent. Library behaviour (grpc/grpc#32551),
# reported but not a violation.
# Its traceback may be chained: the error the handler answered with, then grpcio's own.
BENIGN_RECORD = "ExecuteBatchError raised in core by servicer method"
CHAINED = ("During handling of the above exception, another exception occurred:",
           "The above exception was the direct cause of the following exception:")
DEFINITE_NAMES = frozenset(code.name for code in DEFINITE_FAILURES)
REFUSALS_OF_INPUT = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})  # what a node answers only to a bad order
JUDGED_BY_INPUT = REFUSALS_OF_INPUT | {"OK"}  # answers that depend on the order alone, not on the cluster's state

View = dict[str, tuple[int, int]]  # market -> (seq, checksum)


class Checks:
    def __init__(self, cluster: Cluster, ledger: Ledger, clients: Clients, markets: list[str],
                 settle_timeout: float) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.clients = clients
        self.markets = markets
        self.settle_timeout = settle_timeout

    def settle(self, report: Report) -> View:
        """Heals the cluster, resolves ambiguous orders, waits for convergence: the nodes' common view."""
        cluster = self.cluster
        for process in cluster.sequencers:
            process.signal(signal.SIGCONT)
        for index, process in enumerate(cluster.nodes):
            process.signal(signal.SIGCONT)
            if cluster.netns is not None and index in cluster.netns.impaired:
                cluster.heal(index)
        # Orders whose every attempt was ambiguous: ask again now that the cluster is whole, with the key that
        # placed them (another account's key would be another account's order: chaos seed 2405 placed a client's
        # ambiguous order again as the probes' account, and the first had been numbered).
        unresolved = [r for r in self.ledger.orders if r.final == "AMBIGUOUS"]
        for number, record in enumerate(unresolved):
            self.clients.place(self.clients.shared_stubs(record.account), record, number % len(cluster.nodes),
                               attempts=MAX_ATTEMPTS, timeout=CALL_TIMEOUT)
        still = sum(1 for r in self.ledger.orders if r.final == "AMBIGUOUS")
        self.ledger.stats.add("unresolved", still)
        if still:  # every fault healed and every node up: each order must get an answer now
            self.ledger.violation(f"{still} orders got no answer from any node after the cluster was healed")
        if self.ledger.expired.is_set():
            return {}
        try:
            return cluster.wait_converged(timeout=self.settle_timeout, nodes=list(range(len(cluster.nodes))))
        except TimeoutError:
            report.divergences += 1
            statuses = []
            for index in range(len(cluster.nodes)):
                try:
                    status = cluster.status(index)
                    statuses.append(f"node-{index + 1} {status.state}: " + ", ".join(
                        f"{m.market} seq {m.applied_seq} known {m.known_seq} checksum {m.checksum} "
                        f"buffered {m.buffered}" for m in status.markets))
                except grpc.RpcError as error:
                    statuses.append(f"node-{index + 1}: {error.code().name}")
            self.ledger.violation("the nodes did not converge within "
                                  f"{self.settle_timeout:.0f}s: " + " | ".join(statuses))
            return {}

    def check_log(self, views: View, report: Report) -> None:
        """The log replayed through a fresh engine gives the nodes' view; no command is in it twice; every
        answer a client was given agrees with it (check_ledger); the nodes are at the log's end."""
        violation = self.ledger.violation
        logs = {market: read_log(self.cluster, market) for market in self.markets}
        try:
            result = replay(parse_markets(self.cluster.markets), logs)
        except AssertionError as error:  # a gap or a number used twice
            report.divergences += 1
            violation(f"the Sequencer's log is not gap-free: {error}")
            return
        for market in self.markets:
            replayed = (result.engine.last_seq(market), result.engine.checksum(market))
            if views and views.get(market) != replayed:
                report.divergences += 1
                violation(f"{market}: the nodes report (seq, checksum) {views.get(market)} but replaying "
                          f"the log gives {replayed}")
        origins: Counter[tuple[str, str, int]] = Counter()
        for market, commands in result.commands.items():
            for command in commands.values():
                origins[(market, command.origin_node, command.origin_ref)] += 1
        for (market, node, ref), count in origins.items():
            if count > 1:
                violation(f"{market}: command {node}/{ref} was numbered {count} times")
        for (market, coid), seqs in placements(result).items():
            if len(seqs) > 1:
                violation(f"{market}: client_order_id {coid} is in the log {len(seqs)} times: {seqs}")
        self.check_self_trades(result)
        self.check_ledger(result, report)
        self.check_market_data(views, result, report)
        self.check_replicas(logs, report)
        current = {market: len(entries) for market, entries in logs.items()}
        if views and any(views[m][0] != current[m] for m in self.markets):
            report.divergences += 1
            violation(f"the nodes' sequences {views} differ from the Sequencer's {current}")

    def check_self_trades(self, result: Replay) -> None:
        """No trade in the replayed log has one account on both sides; counts the trades prevented instead."""
        prevented = 0
        for market in self.markets:
            for events in result.events[market].values():
                for event in events:
                    if isinstance(event, eng.OrderFilled) and event.maker_account and \
                            event.maker_account == event.taker_account:
                        self.ledger.violation(f"{market}: trade {event.trade_id} at {event.seq} is a self-trade of "
                                              f"{event.maker_account}")
                    elif isinstance(event, eng.OrderCancelled | eng.OrderReduced) and \
                            event.reason is eng.CancelReason.SELF_TRADE_PREVENTED:
                        prevented += 1
        self.ledger.stats.add("self_trades_prevented", prevented)

    def check_ledger(self, result: Replay, report: Report) -> None:
        """Every acknowledged operation is in the log with the answer given; no refused order is."""
        violation = self.ledger.violation
        places = placements(result)
        for record in self.ledger.orders:
            market = record.request.market or self.markets[0]
            seqs = places.get((market, record.coid), [])
            meant = record.expected_error or "OK"
            if record.final in JUDGED_BY_INPUT and record.final != meant:
                violation(f"order {record.coid} was answered {record.final}; the workload made it for {meant}")
            if record.final == "OK":
                response = record.response
                assert response is not None
                command = result.commands.get(response.market, {}).get(response.seq)
                if command is None or command.client_order_id != record.coid:
                    report.divergences += 1
                    violation(f"acknowledged order {record.coid} ({response.market}#{response.seq}) is not "
                              f"in the log at that sequence (log holds {seqs})")
                    continue
                if (differs := _differs_from_request(command, record.request, record.account, market)) is not None:
                    report.divergences += 1
                    violation(f"acknowledged order {record.coid} is in the log at {response.market}#"
                              f"{response.seq} with {differs}")
                    continue
                expected = result.expected_answer(response)
                if expected != response:
                    report.divergences += 1
                    violation(f"the answer to {record.coid} differs from the log's replay: told "
                              f"{_short(response)}, replay gives {_short(expected)}")
            elif record.final == "ABORTED":  # CONTRACT 3: an order is never invalidated for good by a stale view
                violation(f"order {record.coid} was ABORTED (attempts {record.attempts})")
            elif record.final in DEFINITE_NAMES and seqs:
                history = " after an ambiguous attempt" if any(
                    code in AMBIGUOUS_NAMES for _, code in record.attempts) else ""
                violation(f"order {record.coid} was refused with {record.final}{history} but is in the "
                          f"log at {market}#{seqs} (attempts {record.attempts})")
        for change in self.ledger.changes:
            if change.code == "ABORTED":
                violation(f"{change.kind} of {change.market}#{change.order_id} was ABORTED")
            if change.code != "OK":
                continue
            answer = change.response
            assert answer is not None
            command = result.commands.get(change.market, {}).get(answer.seq)
            kind = "cancel_order" if change.kind == "cancel" else "amend_order"
            if command is None or command.WhichOneof("kind") != kind or \
                    getattr(command, kind).order_id != change.order_id:
                report.divergences += 1
                violation(f"acknowledged {change.kind} of {change.market}#{change.order_id} is not in the "
                          f"log at {answer.seq}")
                continue
            events = result.events[change.market][answer.seq]
            if (rejected := order_messages.rejection(events)) is not None:
                report.divergences += 1
                violation(f"acknowledged {change.kind} of {change.market}#{change.order_id}: the replay rejects it "
                          f"({rejected.reason.name})")
                continue
            if isinstance(answer, pb.CancelOrderResponse):
                cancelled = sum(e.size for e in events if isinstance(e, eng.OrderCancelled))
                if cancelled != answer.cancelled_size:
                    report.divergences += 1
                    violation(f"cancel of {change.market}#{change.order_id}: told {answer.cancelled_size} "
                              f"cancelled, the replay cancels {cancelled}")
            else:
                trades = [order_messages.trade(e) for e in events if isinstance(e, eng.OrderFilled)]
                if list(answer.trades) != trades:
                    report.divergences += 1
                    violation(f"amend of {change.market}#{change.order_id}: trades differ from the replay")

    def check_market_data(self, views: View, result: Replay, report: Report) -> None:
        """Every node's trades, candles and ticker are the log's (times included), once the nodes are at its end."""
        if not views or any(views[m][0] != result.engine.last_seq(m) for m in self.markets):
            return  # not converged at the log's end: reported above
        try:
            differences = market_data_differences(self.cluster, result)
        except grpc.RpcError as error:
            differences = [f"market data could not be read: {error.code().name} {error.details()}"]
        for difference in differences:
            report.divergences += 1
            self.ledger.violation(difference)

    def check_replicas(self, logs: dict[str, list[types_pb2.SequencedCommand]], report: Report) -> None:
        """HA mode: every Sequencer replica's archive is the leader's log, entry for entry (once it caught up)."""
        cluster = self.cluster
        leader = cluster.leader_index()
        for index in range(len(cluster.sequencers) if cluster.ha else 0):
            if index == leader:
                continue
            for market, entries in logs.items():
                length = len(entries)
                def holds_log(i: int = index, m: str = market, n: int = length) -> bool:
                    return cluster.sequencer_view(i, m)[1] >= n

                try:
                    wait_until(holds_log, 30, f"{cluster.sequencer_name(index)} to hold {market}'s log")
                    copy = read_replica_log(cluster, index, market, len(entries))
                except (TimeoutError, grpc.RpcError) as error:
                    copy, problem = [], str(error)
                else:
                    problem = ""
                if copy != entries:
                    report.divergences += 1
                    self.ledger.violation(f"{cluster.sequencer_name(index)}'s archive of {market} differs from the "
                                          f"leader's log ({len(copy)} entries against {len(entries)}) {problem}")

    def check_processes(self) -> None:
        """Every process runs at the end, and no service log holds a traceback or CRITICAL line."""
        cluster = self.cluster
        for process in cluster.processes():
            if not process.running:
                self.ledger.violation(f"{process.name} is not running at the end (exit code {process.exit_code()})")
        if not cluster.consul.running:
            self.ledger.violation("the Consul agent is not running at the end")
        for path in sorted((cluster.workdir / "logs").glob("*.log")):
            if path.name.startswith("consul"):
                continue
            lines = path.read_text(errors="replace").splitlines()
            benign = False  # within the traceback of a benign record
            for number, line in enumerate(lines):
                if not LOG_ALARMS.search(line):
                    continue
                previous = next((text for text in reversed(lines[:number]) if text.strip()), "")
                if number and BENIGN_RECORD in lines[number - 1]:
                    benign = True
                    self.ledger.out(f"note: {path.name}:{number}: grpcio could not send an answer to a client that "
                                    "had given up (benign, grpc/grpc#32551)")
                elif not (benign and previous in CHAINED):
                    benign = False
                    context = " / ".join(lines[max(0, number - 1):number + 6])
                    self.ledger.violation(f"{path.name}:{number + 1}: {context[:1500]}")


def placements(result: Replay) -> dict[tuple[str, str], list[int]]:
    """(market, client_order_id) -> the sequence numbers of the log's new orders with that id."""
    places: dict[tuple[str, str], list[int]] = {}
    for market, commands in result.commands.items():
        for seq, command in commands.items():
            if command.client_order_id:
                places.setdefault((market, command.client_order_id), []).append(seq)
    return places


def _short(response: pb.CreateOrderResponse | None) -> str:
    if response is None:
        return "no answer"
    trades = [(t.price, t.size, t.maker_order_id) for t in response.trades]
    return (f"seq {response.seq} {pb.OrderStatus.Name(response.status)} filled {response.filled_size} "
            f"remaining {response.remaining_size} trades {trades}")


def _differs_from_request(command: types_pb2.Command, request: pb.CreateOrderRequest, account: str,
                          market: str) -> str | None:
    """What of the logged `command` differs from the order the client sent (None: nothing), worked out here
    from the contract's rules and not with the node's own conversion (a bug there would hide in both)."""
    side = request.side or (types_pb2.BUY if request.size > 0 else types_pb2.SELL)
    wanted = {"market": market, "account": account, "side": side, "size": abs(request.size),
              "price": request.limit_price, "order_type": request.order_type or types_pb2.LIMIT,
              "self_trade_prevention": request.self_trade_prevention or types_pb2.CANCEL_TAKER}
    order = command.new_order
    logged = {"market": command.market, "account": command.account, "side": order.side, "size": order.size,
              "price": order.price, "order_type": order.order_type,
              "self_trade_prevention": order.self_trade_prevention}
    wrong = [f"{name} {logged[name]!r} (sent {wanted[name]!r})" for name in wanted if logged[name] != wanted[name]]
    return ", ".join(wrong) or None
