"""Recovery of real clusters: late and restarted nodes converge, a restarted Sequencer loses nothing,
client_order_id makes CreateOrder idempotent across nodes.

Every check ends with the independent one: replaying the Sequencer's log through a fresh engine
must give the checksums every node reports.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest

from devtools.local_cluster import Cluster, wait_until
from devtools.verify import read_log, replay_cluster
from devtools.workload import OrderGenerator, Workload
from exchange.cluster_common import parse_markets, token_metadata
from exchange.errors import Unavailable
from exchange.node.sequencer_link import GateStream
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc, types_pb2
from tests.integration.conftest import STUB_ACCOUNTS
from tests.unit.fakes import run_scenario

pytestmark = pytest.mark.integration

CALL_TIMEOUT = 15.0
AMBIGUOUS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@contextmanager
def node_stubs(cluster: Cluster) -> Iterator[list[exchange_pb2_grpc.ExchangeNodeStub]]:
    addresses = cluster.node_addresses
    channels = [cluster.channel(address, STUB_ACCOUNTS[index % 3]) for index, address in enumerate(addresses)]
    try:
        yield [exchange_pb2_grpc.ExchangeNodeStub(channel) for channel in channels]
    finally:
        for channel in channels:
            channel.close()


def orders(markets: list[str], rng: random.Random) -> OrderGenerator:
    """A mix of resting and crossing limit orders around 100 (signed sizes), some IOC, in every market."""
    return Workload(markets=tuple(markets), sides="signed", types={types_pb2.LIMIT: 9, types_pb2.IOC: 1}).orders(rng)


def checksums_equal_replay(cluster: Cluster, views: dict[str, tuple[int, int]]) -> None:
    """The replayed log gives every market's (seq, checksum) the converged nodes report, and no
    command was numbered twice (a node's (origin_node, origin_ref) is unique per command)."""
    result = replay_cluster(cluster)
    replayed = {m: (result.engine.last_seq(m), result.engine.checksum(m)) for m in result.engine.markets}
    assert replayed == views
    for market, commands in result.commands.items():
        origins = [(command.origin_node, command.origin_ref) for command in commands.values()]
        assert all(node and ref for node, ref in origins), f"{market}: a logged command has no origin"
        assert len(set(origins)) == len(origins), f"{market}: a command was numbered twice"


def full_book(stub: exchange_pb2_grpc.ExchangeNodeStub, market: str) -> pb.GetOrderBookResponse:
    book = stub.GetOrderBook(pb.GetOrderBookRequest(market=market, depth=1000), timeout=CALL_TIMEOUT)
    assert len(book.bids) < 1000 and len(book.asks) < 1000, "the book has more levels than depth 1000 shows"
    return book


@dataclass
class Load:
    """Client threads placing random orders on chosen nodes until stopped; records every outcome."""

    stubs: list[exchange_pb2_grpc.ExchangeNodeStub]
    targets: list[int]
    markets: list[str]
    threads: int = 3
    unique_ids: bool = False
    ok: list[tuple[int, pb.CreateOrderRequest, pb.CreateOrderResponse]] = field(default_factory=list)
    errors: list[tuple[int, pb.CreateOrderRequest, grpc.RpcError]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True, name=f"load-{number}")
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, number: int) -> None:
        generator = orders(self.markets, random.Random(number))
        for count in itertools.count():
            if self._stop.is_set():
                return
            with self._lock:
                target = self.targets[(number + count) % len(self.targets)]
            client_order_id = f"t{number}-{uuid.uuid4().hex[:16]}" if self.unique_ids else ""
            request = generator.request(client_order_id)
            try:
                response = self.stubs[target].CreateOrder(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                with self._lock:
                    self.errors.append((target, request, error))
                continue
            with self._lock:
                self.ok.append((target, request, response))

    def retarget(self, targets: list[int]) -> None:
        with self._lock:
            self.targets = targets

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.ok), len(self.errors)

    def wait_for_more_ok(self, more: int, timeout: float, what: str) -> None:
        goal = self.counts()[0] + more
        wait_until(lambda: self.counts()[0] >= goal, timeout, f"{more} more successful orders {what}")

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=CALL_TIMEOUT + 5)
        assert not any(worker.is_alive() for worker in self._workers), "a load thread did not stop"


def describe(errors: list[tuple[int, pb.CreateOrderRequest, grpc.RpcError]]) -> list[str]:
    return [f"node {target}: {error.code().name} {error.details()}" for target, _, error in errors]


def test_late_node_catches_up_after_500_orders(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.start(nodes=2)
    markets = [m.symbol for m in parse_markets(c.markets)]
    with node_stubs(c) as stubs:
        generator = orders(markets, random.Random(500))
        requests = [generator.request() for _ in range(500)]

        def place(numbered: tuple[int, pb.CreateOrderRequest]) -> pb.CreateOrderResponse:
            number, request = numbered
            return stubs[number % 2].CreateOrder(request, timeout=CALL_TIMEOUT)

        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(place, enumerate(requests)))
        assert len({(r.market, r.seq) for r in responses}) == 500
        assert sum(len(r.trades) for r in responses) > 0, "the orders were meant to cross"
        before = c.wait_converged(nodes=[0, 1])
        assert sum(seq for seq, _ in before.values()) == 500

        c.start_node(2)
        views = c.wait_converged(nodes=[0, 1, 2])
        assert views == before
        for market in markets:
            book0, book2 = full_book(stubs[0], market), full_book(stubs[2], market)
            assert book2 == book0
            assert (book2.seq, book2.checksum) == views[market]
            assert book2.bids or book2.asks
        checksums_equal_replay(c, views)


def public_market_data(
    stub: exchange_pb2_grpc.ExchangeNodeStub, market: str
) -> tuple[pb.GetTradesResponse, list[pb.GetCandlesResponse], pb.Ticker]:
    """A node's trades, candles of every interval and ticker of `market`."""
    trades = stub.GetTrades(pb.GetTradesRequest(market=market, limit=1000), timeout=CALL_TIMEOUT)
    candles = [stub.GetCandles(pb.GetCandlesRequest(market=market, interval=interval, limit=1000),
                               timeout=CALL_TIMEOUT) for interval in ("1m", "5m", "15m", "1h", "1d")]
    return trades, candles, stub.GetTicker(pb.GetTickerRequest(market=market), timeout=CALL_TIMEOUT)


def test_late_node_restores_a_peers_snapshot_then_the_log_and_keeps_idempotency(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster(extra_node_args=["--snapshot-threshold", "100"])
    c.start(nodes=2)
    markets = [m.symbol for m in parse_markets(c.markets)]
    with node_stubs(c) as stubs:
        generator = orders(markets, random.Random(7))
        first = [stubs[n % 2].CreateOrder(generator.request(f"early-{n}"), timeout=CALL_TIMEOUT)
                 for n in range(300)]
        c.wait_converged(nodes=[0, 1])

        c.start_node(2)
        assert "restored from node-" in c.nodes[2].read_log(), "the late node should start from a snapshot"
        for _ in range(20):  # the log after the snapshot keeps flowing to it
            stubs[2].CreateOrder(generator.request(), timeout=CALL_TIMEOUT)
        views = c.wait_converged(nodes=[0, 1, 2])
        for market in markets:
            assert full_book(stubs[2], market) == full_book(stubs[0], market)
            # the snapshot carries the market data: trades, candles and ticker from before it, the same
            assert public_market_data(stubs[2], market) == public_market_data(stubs[0], market)
        assert any(public_market_data(stubs[2], m)[0].oldest_trade_id == 1 for m in markets)
        checksums_equal_replay(c, views)

        # The snapshot carries the client_order_id map: a retry of an order from before it is recognised
        # (never placed twice); its first answer was never seen here, so the node names the order instead.
        with pytest.raises(grpc.RpcError) as retried:
            stubs[2].CreateOrder(orders(markets, random.Random(7)).request("early-0"), timeout=CALL_TIMEOUT)
        assert retried.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"is order {first[0].order_id}" in retried.value.details()
        assert c.wait_converged(nodes=[0, 1, 2]) == views


def test_node_killed_and_restarted_under_load_converges(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.start()
    markets = [m.symbol for m in parse_markets(c.markets)]
    with node_stubs(c) as stubs:
        load = Load(stubs, targets=[0, 2], markets=markets).start()
        try:
            load.wait_for_more_ok(30, 30, "before the kill")
            c.nodes[1].kill()
            load.wait_for_more_ok(60, 30, "while node 1 is dead")
            c.start_node(1)
            load.wait_for_more_ok(30, 30, "after node 1 restarted")
            load.retarget([0, 1, 2])  # the restarted node takes orders too
            wait_until(lambda: any(target == 1 for target, _, _ in load.ok[-50:]), 30,
                       "an order placed on the restarted node")
        finally:
            load.stop()
        assert not load.errors, describe(load.errors)
        views = c.wait_converged(nodes=[0, 1, 2])
        assert sum(seq for seq, _ in views.values()) == len(load.ok)
        checksums_equal_replay(c, views)


def test_sequencer_killed_and_restarted_loses_no_acknowledged_order(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.start()
    markets = [m.symbol for m in parse_markets(c.markets)]
    with node_stubs(c) as stubs:
        load = Load(stubs, targets=[0, 1, 2], markets=markets, threads=4, unique_ids=True).start()
        try:
            load.wait_for_more_ok(40, 30, "before the Sequencer is killed")
            sequencer = c.sequencer
            assert sequencer is not None
            sequencer.kill()
            errors_before = load.counts()[1]
            # The nodes retry a Sequencer outage for a while before answering UNAVAILABLE: let the
            # clients see it (or run out of patience) before the restart.
            wait_until(lambda: load.counts()[1] >= errors_before + 2, 30,
                       "clients to get an error while the Sequencer is down")
            c.start_sequencer()
            restarted_at = load.counts()[0]
            load.wait_for_more_ok(60, 30, "after the Sequencer restarted (nodes must resume by themselves)")
            wait_until(lambda: {target for target, _, _ in load.ok[restarted_at:]} == {0, 1, 2}, 30,
                       "every node to place orders again after the Sequencer restarted")
        finally:
            load.stop()

        assert load.errors, "the Sequencer outage was not noticed by any client"
        every_acknowledged_order_once(c, stubs, load)


def every_acknowledged_order_once(c: Cluster, stubs: list[exchange_pb2_grpc.ExchangeNodeStub], load: Load) -> None:
    """After a fault under `load` (unique client_order_ids): only ambiguous errors; each ambiguous order, sent
    again with its client_order_id, is placed at most once; the log is gap-free, holds every acknowledged order
    at the number it was acknowledged with and nothing else, and its replay gives the nodes' converged books."""
    markets = [m.symbol for m in parse_markets(c.markets)]
    unexpected = [e for e in load.errors if e[2].code() not in AMBIGUOUS]
    assert not unexpected, describe(unexpected)
    retried = {}
    for target, request, _ in load.errors:
        response = stubs[target].CreateOrder(request, timeout=CALL_TIMEOUT)
        assert response.client_order_id == request.client_order_id
        retried[request.client_order_id] = response

    views = c.wait_converged(nodes=list(range(len(c.nodes))))
    logs = {market: read_log(c, market) for market in markets}
    by_seq: dict[tuple[str, int], str] = {}
    seen: dict[str, list[tuple[str, int]]] = {}
    for market, entries in logs.items():
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), f"{market}: gap in the log"
        assert len(entries) == views[market][0]
        for entry in entries:
            command = types_pb2.Command.FromString(entry.command)
            by_seq[(market, entry.seq)] = command.client_order_id
            seen.setdefault(command.client_order_id, []).append((market, entry.seq))
    twice = {coid: places for coid, places in seen.items() if len(places) > 1}
    assert not twice, f"client_order_ids numbered more than once: {twice}"

    for _, request, response in load.ok:
        assert response.order_id == response.seq
        assert by_seq.get((response.market, response.seq)) == request.client_order_id, (
            f"acknowledged order {request.client_order_id} at {response.market}#{response.seq} is not in the log"
        )
    for coid, response in retried.items():
        assert by_seq.get((response.market, response.seq)) == coid
    acknowledged = len(load.ok) + len(retried)
    assert sum(len(entries) for entries in logs.values()) == acknowledged
    checksums_equal_replay(c, views)


def test_client_order_id_places_one_order_across_nodes(cluster: Cluster) -> None:
    """One account's client_order_id is one order, whichever node it is sent to (ids are unique per account:
    bob's "idem-1" is another order)."""
    channels = [cluster.channel(address, "alice") for address in cluster.node_addresses]
    stubs = [exchange_pb2_grpc.ExchangeNodeStub(channel) for channel in channels]
    request = pb.CreateOrderRequest(size=-7, limit_price=150, client_order_id="idem-1")
    first = stubs[0].CreateOrder(request, timeout=CALL_TIMEOUT)
    assert not first.duplicate and first.status == pb.RESTING and first.client_order_id == "idem-1"
    again = stubs[2].CreateOrder(request, timeout=CALL_TIMEOUT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(pool.map(lambda _: stubs[1].CreateOrder(request, timeout=CALL_TIMEOUT), range(2)))
    for response in [again, *concurrent]:
        assert response.duplicate
        assert (response.market, response.order_id, response.seq) == (first.market, first.order_id, first.seq)
        assert (response.status, response.remaining_size) == (pb.RESTING, 7)

    # A fresh client_order_id sent twice at once to one node (never seen before) is also placed once.
    fresh = pb.CreateOrderRequest(size=3, limit_price=90, client_order_id="idem-2")
    with ThreadPoolExecutor(max_workers=2) as pool:
        pair = list(pool.map(lambda _: stubs[1].CreateOrder(fresh, timeout=CALL_TIMEOUT), range(2)))
    assert pair[0].order_id == pair[1].order_id
    assert sorted(r.duplicate for r in pair) == [False, True]

    with cluster.channel(cluster.node_address(0), "bob") as channel:  # bob's "idem-1" is bob's own order
        bobs = exchange_pb2_grpc.ExchangeNodeStub(channel).CreateOrder(
            pb.CreateOrderRequest(size=-7, limit_price=160, client_order_id="idem-1"), timeout=CALL_TIMEOUT)
    assert not bobs.duplicate and bobs.order_id != first.order_id

    views = cluster.wait_converged()
    log = read_log(cluster, first.market)
    ids = [types_pb2.Command.FromString(entry.command).client_order_id for entry in log]
    assert ids == ["idem-1", "idem-2", "idem-1"]
    book = stubs[2].GetOrderBook(pb.GetOrderBookRequest(), timeout=CALL_TIMEOUT)
    assert [(lvl.price, lvl.size, lvl.order_count) for lvl in book.asks] == [(150, 7, 1), (160, 7, 1)]
    assert [(lvl.price, lvl.size, lvl.order_count) for lvl in book.bids] == [(90, 3, 1)]
    checksums_equal_replay(cluster, views)
    for channel in channels:
        channel.close()


def test_gate_stream_times_out_on_a_stalled_sequencer_and_the_retry_recovers_the_lost_grant(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster(nodes=1)
    c.start()
    command = types_pb2.Command(market="BTC-USD", origin_node="test", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=100))

    def request(applied: int) -> sequencer_pb2.SequenceRequest:
        return sequencer_pb2.SequenceRequest(
            market="BTC-USD", applied_seq=applied, node_id="test", commands=[command]
        )

    async def scenario() -> None:
        channel = grpc.aio.insecure_channel(c.sequencer_address)
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        gate = GateStream("BTC-USD")
        token = token_metadata(c.secret.encode())
        first = await gate.ask(stub, gate.take(request(0)), 5, token)
        assert first.granted and first.current_seq == 1
        stalled = gate.take(request(1))
        sequencer = c.sequencer
        assert sequencer is not None
        sequencer.signal(signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
                await asyncio.wait_for(gate.ask(stub, stalled, 0.5, token), 10)  # fails rather than hangs
        finally:
            sequencer.signal(signal.SIGCONT)
        again = await gate.ask(stub, stalled, 5, token)  # the node's retry states the same applied sequence
        # Either the stalled request was numbered (then the retry is stale and carries it back) or it never
        # reached the gate (then the retry is granted); never both.
        assert again.current_seq == 2
        if again.granted:
            assert [a.seq for a in again.assignments] == [2] and not again.missing
        else:
            assert [entry.seq for entry in again.missing] == [2], "the grant whose answer was lost comes back"
        await asyncio.sleep(0.5)  # a stalled request delivered late must not be numbered either
        current = await stub.GetSequence(sequencer_pb2.GetSequenceRequest(market="BTC-USD"), timeout=5)
        assert current.current_seq == 2
        await channel.close()

    run_scenario(scenario(), timeout_s=60)


def test_an_order_whose_client_gave_up_is_shown_pending_then_placed_and_convergence_waits_for_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A node keeps a command it took until the log has it, even after its client stopped waiting (here: the
    Sequencer stalled). GetStatus shows it as `pending`, and the harness's convergence waits for it, so a check
    made meanwhile cannot call a cluster converged that is one entry short of its log (chaos seed 2004)."""
    c = make_cluster()
    c.start()
    with node_stubs(c) as stubs:
        stubs[0].CreateOrder(pb.CreateOrderRequest(size=2, limit_price=100), timeout=CALL_TIMEOUT)
        before = c.wait_converged()
        sequencer = c.sequencer
        assert sequencer is not None
        sequencer.signal(signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as gave_up:
                stubs[1].CreateOrder(pb.CreateOrderRequest(size=-1, limit_price=100, client_order_id="late-1"),
                                     timeout=0.5)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            held = {m.market: m.pending for m in c.status(1).markets}
            assert held["BTC-USD"] == 1, f"the node still holds the order: {held}"
            with pytest.raises(TimeoutError):
                c.wait_converged(timeout=1.0)
        finally:
            sequencer.signal(signal.SIGCONT)
        after = c.wait_converged()
    assert after["BTC-USD"][0] == before["BTC-USD"][0] + 1, "the order its client gave up on is placed once"
    assert all(m.pending == 0 for i in range(3) for m in c.status(i).markets)
    checksums_equal_replay(c, after)


def first_event_seq(stub: exchange_pb2_grpc.ExchangeNodeStub, market: str, from_seq: int) -> int | grpc.StatusCode:
    """The sequence of the first event StreamEvents gives from `from_seq`, or the status it ends with."""
    stream = stub.StreamEvents(pb.StreamEventsRequest(market=market, from_seq=from_seq), timeout=CALL_TIMEOUT)
    try:
        return int(next(stream).seq)
    except grpc.RpcError as error:
        return error.code()
    finally:
        stream.cancel()


def test_a_restarted_node_starts_from_its_own_snapshot_and_equals_a_replay(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A node SIGKILLed starts from its last periodic snapshot and one stopped gracefully from the one it wrote
    as it stopped: either way it reads only the log after the snapshot (its events start there, behaviour
    docs/operations.md documents) and its books equal the other nodes' and a replay of the log."""
    c = make_cluster(extra_node_args=["--snapshot-every", "100"])
    c.start()
    markets = [m.symbol for m in parse_markets(c.markets)]
    snapshots = c.workdir / c.node_id(0)
    with node_stubs(c) as stubs:
        generator = orders(markets, random.Random(22))
        for number in range(300):
            stubs[number % 3].CreateOrder(generator.request(), timeout=CALL_TIMEOUT)
        c.wait_converged()
        wait_until(lambda: any(snapshots.glob("snapshot-*.pb")), 30, "node-1's periodic snapshot")
        c.nodes[0].kill()
        for number in range(30):
            stubs[1 + number % 2].CreateOrder(generator.request(), timeout=CALL_TIMEOUT)
        c.start_node(0)
        views = c.wait_converged()
        checksums_equal_replay(c, views)
        for market in markets:
            assert full_book(stubs[0], market) == full_book(stubs[1], market)
        started_at = {market: first_event_seq(stubs[0], market, 1) for market in markets}
        assert grpc.StatusCode.OUT_OF_RANGE in started_at.values(), "it started from a snapshot, not seq 1"
        assert all(first_event_seq(stubs[1], market, 1) == 1 for market in markets if views[market][0])

        c.nodes[0].stop()  # graceful: it writes a snapshot at its position as it stops
        assert len(list(snapshots.glob("snapshot-*.pb"))) == 2, "it keeps the last two"
        c.start_node(0)
        assert c.wait_converged() == views
        for market in markets:
            seq = views[market][0]
            if seq:
                assert first_event_seq(stubs[0], market, seq) == grpc.StatusCode.OUT_OF_RANGE, \
                    "nothing of the log before its position was replayed"
            assert full_book(stubs[0], market) == full_book(stubs[1], market)
        stubs[0].CreateOrder(generator.request(), timeout=CALL_TIMEOUT)
        checksums_equal_replay(c, c.wait_converged())
