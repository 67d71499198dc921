"""Accounts against a real cluster: API keys from the registry in Consul KV, ownership on every node, the
rate limit, a trader's own view, self-trade prevention end to end, and bad or revoked keys."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial

import grpc
import pytest

from devtools.local_cluster import Cluster, wait_until
from devtools.verify import replay_cluster
from exchange import engine as eng
from exchange.accounts import add_account, set_active
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

CALL = 15.0


def stub(cluster: Cluster, node: int, account: str | None) -> exchange_pb2_grpc.ExchangeNodeStub:
    return exchange_pb2_grpc.ExchangeNodeStub(cluster.channel(cluster.node_address(node), account))


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.details()
    return refused.value.code()


def book_states(cluster: Cluster) -> list[tuple[str, int, int]]:
    return [(m.market, m.applied_seq, m.checksum) for i in range(3) for m in cluster.status(i).markets]


@pytest.fixture(scope="module")
def accounts_cluster(module_cluster: Cluster) -> Cluster:
    return module_cluster


def test_alices_order_cannot_be_cancelled_amended_or_read_by_bob_on_any_node(accounts_cluster: Cluster) -> None:
    c = accounts_cluster
    order = stub(c, 0, "alice").CreateOrder(pb.CreateOrderRequest(size=3, limit_price=10), timeout=CALL)
    c.wait_converged()
    before = book_states(c)
    for node in range(3):
        bob = stub(c, node, "bob")
        assert status_of(partial(bob.CancelOrder, pb.CancelOrderRequest(order_id=order.order_id),
                                 timeout=CALL)) == grpc.StatusCode.PERMISSION_DENIED
        assert status_of(partial(bob.AmendOrder, pb.AmendOrderRequest(order_id=order.order_id, size=1),
                                 timeout=CALL)) == grpc.StatusCode.PERMISSION_DENIED
        assert status_of(partial(bob.GetOrder, pb.GetOrderRequest(order_id=order.order_id),
                                 timeout=CALL)) == grpc.StatusCode.PERMISSION_DENIED
    assert book_states(c) == before, "bob changed nothing"
    alice = stub(c, 2, "alice")
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.order_id), timeout=CALL).remaining_size == 3
    assert alice.CancelOrder(pb.CancelOrderRequest(order_id=order.order_id), timeout=CALL).cancelled_size == 3


def test_the_engine_decides_ownership_again_from_the_log(accounts_cluster: Cluster) -> None:
    """A cancel of another account's order that reaches the log (the node's check raced) is a rejection event."""
    c = accounts_cluster
    replay = replay_cluster(c)
    for market, events in replay.events.items():
        for seq_events in events.values():
            for event in seq_events:
                if isinstance(event, eng.OrderCancelled) and event.reason is eng.CancelReason.USER:
                    command = replay.commands[market][event.seq]
                    assert command.account == event.account, "only an order's owner ever cancels it"


def test_market_data_needs_no_key_and_shows_no_owner(accounts_cluster: Cluster) -> None:
    c = accounts_cluster
    anonymous = stub(c, 1, None)
    book = anonymous.GetOrderBook(pb.GetOrderBookRequest(all_levels=True, include_orders=True), timeout=CALL)
    assert anonymous.GetStatus(pb.GetStatusRequest(), timeout=CALL).accounts.loaded
    assert "account" not in str(book)
    events = anonymous.StreamEvents(pb.StreamEventsRequest(from_seq=1), timeout=1)
    with pytest.raises(grpc.RpcError):
        for event in events:
            assert "account" not in str(event)
    for field in (*pb.MarketEvent.DESCRIPTOR.fields, *pb.Trade.DESCRIPTOR.fields, *pb.LevelOrder.DESCRIPTOR.fields):
        assert "account" not in field.name


@pytest.mark.parametrize(("metadata", "says"), [
    ((), "needs an API key"),
    ((("authorization", ""),), "Bearer"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "Bearer"),
    ((("authorization", "Bearer"),), "Bearer"),
    ((("authorization", "Bearer " + "k" * 10_240),), "not an API key"),
    ((("authorization", "Bearer pxk_not-a-key"),), "unknown API key"),
    ((("authorization-bin", b"\xff\xfe\x00\x80"),), "needs an API key"),
    ((("authorization", "Bearer pxk_\u00e9t\u00e9"),), None),  # grpc refuses non-ASCII text metadata itself
])
def test_bad_keys_are_unauthenticated_and_place_nothing(accounts_cluster: Cluster, metadata: tuple,
                                                         says: str | None) -> None:
    c = accounts_cluster
    c.wait_converged()
    before = book_states(c)
    anonymous = stub(c, 0, None)
    with pytest.raises((grpc.RpcError, ValueError)) as refused:
        anonymous.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=10), metadata=metadata, timeout=CALL)
    if says is not None:
        error = refused.value
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert says in error.details()
    assert book_states(c) == before


def test_a_key_added_with_the_cli_works_on_every_node_within_seconds_and_stops_after_disable(
    accounts_cluster: Cluster,
) -> None:
    c = accounts_cluster
    cli = [sys.executable, "-m", "exchange.cli", "accounts"]
    env = {**os.environ, **c.admin_env()}
    added = subprocess.run([*cli, "add", "carol"], capture_output=True, text=True, timeout=60, env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("pxk_")
    metadata = (("authorization", f"Bearer {key}"),)

    def works_everywhere() -> bool:
        try:
            for node in range(3):
                stub(c, node, None).ListOrders(pb.ListOrdersRequest(), metadata=metadata, timeout=CALL)
        except grpc.RpcError:
            return False
        return True

    wait_until(works_everywhere, 10, "carol's new key to work on every node")
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=60, env=env)
    assert "carol" in listed.stdout and "active" in listed.stdout
    assert subprocess.run([*cli, "disable", "carol"], capture_output=True, timeout=60, env=env).returncode == 0

    def refused_everywhere() -> bool:
        for node in range(3):
            try:
                stub(c, node, None).ListOrders(pb.ListOrdersRequest(), metadata=metadata, timeout=CALL)
                return False
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                    return False
        return True

    wait_until(refused_everywhere, 10, "carol's disabled key to stop working on every node")
    assert subprocess.run([*cli, "add", "carol"], capture_output=True, timeout=60, env=env).returncode == 1, \
        "an account name is taken once"


def test_a_key_disabled_while_its_stream_is_open_ends_the_stream_and_nothing_after_is_placed(
    accounts_cluster: Cluster,
) -> None:
    c = accounts_cluster
    key = add_account(c.kv(), c.secret.encode(), "dave")
    metadata = (("authorization", f"Bearer {key}"),)
    wait_until(lambda: _lists(c, metadata), 10, "dave's key to work")
    sent = threading.Event()
    released = threading.Event()

    def orders() -> Iterator[pb.CreateOrderRequest]:
        yield pb.CreateOrderRequest(size=1, limit_price=11, client_order_id="dave-1")
        sent.set()
        released.wait(20)
        yield pb.CreateOrderRequest(size=1, limit_price=11, client_order_id="dave-2")

    results: list[pb.OrderEntryResult] = []
    errors: list[grpc.RpcError] = []

    def run() -> None:
        try:
            results.extend(stub(c, 0, None).OrderEntry(orders(), metadata=metadata, timeout=30))
        except grpc.RpcError as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert sent.wait(10)
    wait_until(lambda: len(results) == 1 or bool(errors), 10, "the first order's result")
    set_active(c.kv(), c.secret.encode(), "dave", False)
    wait_until(lambda: not _lists(c, metadata), 10, "dave's key to stop working")
    released.set()
    thread.join(30)
    assert [r.order.client_order_id for r in results] == ["dave-1"]
    assert errors and errors[0].code() == grpc.StatusCode.UNAUTHENTICATED
    replay = replay_cluster(c)
    placed = [cmd.client_order_id for cmds in replay.commands.values() for cmd in cmds.values()]
    assert "dave-1" in placed and "dave-2" not in placed


def _lists(c: Cluster, metadata: tuple[tuple[str, str], ...]) -> bool:
    try:
        stub(c, 0, None).ListOrders(pb.ListOrdersRequest(), metadata=metadata, timeout=CALL)
        return True
    except grpc.RpcError:
        return False


def test_a_traders_own_view_lists_open_orders_in_pages_and_streams_its_fills(accounts_cluster: Cluster) -> None:
    c = accounts_cluster
    alice, bob = stub(c, 0, "alice"), stub(c, 1, "bob")
    mine = [alice.CreateOrder(pb.CreateOrderRequest(market="ETH-USD", size=-2, limit_price=700 + n),
                              timeout=CALL).order_id for n in range(5)]
    bob.CreateOrder(pb.CreateOrderRequest(market="ETH-USD", size=1, limit_price=650), timeout=CALL)  # not alice's
    first = alice.ListOrders(pb.ListOrdersRequest(market="ETH-USD", page_size=3), timeout=CALL)
    second = alice.ListOrders(pb.ListOrdersRequest(market="ETH-USD", page_size=3,
                                                    page_token=first.next_page_token), timeout=CALL)
    assert [o.order_id for o in (*first.orders, *second.orders)] == mine and not second.next_page_token
    assert all(o.status == pb.RESTING and o.side == types_pb2.SELL for o in first.orders)
    taker = bob.CreateOrder(pb.CreateOrderRequest(market="ETH-USD", size=3, limit_price=701), timeout=CALL)
    assert taker.filled_size == 3
    stream = alice.StreamOrders(pb.StreamOrdersRequest(market="ETH-USD", from_seq=mine[0]), timeout=3)
    fills = []
    with pytest.raises(grpc.RpcError):  # the stream stays open: read until the deadline
        for event in stream:
            if event.WhichOneof("event") == "fill":
                fills.append((event.fill.order_id, event.fill.size, event.fill.maker, event.fill.remaining))
    assert fills == [(mine[0], 2, True, 0), (mine[1], 1, True, 1)]
    bobs = bob.StreamOrders(pb.StreamOrdersRequest(market="ETH-USD", from_seq=mine[0]), timeout=3)
    seen = []
    with pytest.raises(grpc.RpcError):
        for event in bobs:
            seen.append(event)
    assert {e.fill.order_id for e in seen if e.WhichOneof("event") == "fill"} == {taker.order_id}
    assert not {e.accepted.order_id for e in seen if e.WhichOneof("event") == "accepted"} & set(mine)


def test_an_account_over_its_rate_limit_gets_resource_exhausted_saying_when_to_retry(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster(nodes=1, rate_limit=None, extra_node_args=["--rate-limit", "5", "--rate-burst", "5"])
    c.start()
    alice = stub(c, 0, "alice")
    answers = []
    for _ in range(8):
        try:
            alice.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=10), timeout=CALL)
            answers.append("OK")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "retry in" in error.details()
            answers.append("LIMITED")
    assert answers[:5] == ["OK"] * 5 and "LIMITED" in answers[5:]
    bob = stub(c, 0, "bob")  # another account has its own bucket
    assert bob.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=10), timeout=CALL).status == pb.RESTING


# alice rests 5 @ 100, bob 4 @ 101; then alice buys 4 @ 101 with each mode: she meets her own order first
@pytest.mark.parametrize(("mode", "asks_after", "status", "filled", "names_resting"), [
    (types_pb2.CANCEL_TAKER, [(100, 5, 1), (101, 4, 1)], pb.CANCELLED, 0, False),
    (types_pb2.CANCEL_MAKER, [], pb.FILLED, 4, True),
    (types_pb2.CANCEL_BOTH, [(101, 4, 1)], pb.CANCELLED, 0, True),
    (types_pb2.DECREMENT, [(100, 1, 1), (101, 4, 1)], pb.CANCELLED, 0, True),
])
def test_self_trade_prevention_end_to_end(make_cluster: Callable[..., Cluster], mode: types_pb2.SelfTradePrevention,
                                          asks_after: list[tuple[int, int, int]], status: int, filled: int,
                                          names_resting: bool) -> None:
    c = make_cluster(nodes=1)
    c.start()
    alice, bob = stub(c, 0, "alice"), stub(c, 0, "bob")
    own = alice.CreateOrder(pb.CreateOrderRequest(size=-5, limit_price=100), timeout=CALL)
    bob.CreateOrder(pb.CreateOrderRequest(size=-4, limit_price=101), timeout=CALL)
    taker = alice.CreateOrder(pb.CreateOrderRequest(size=4, limit_price=101, self_trade_prevention=mode),
                              timeout=CALL)
    assert (taker.status, taker.filled_size) == (status, filled), taker
    if status == pb.CANCELLED:
        assert (taker.cancelled_size, taker.cancel_reason) == (4, "SELF_TRADE_PREVENTED")
    assert len(taker.prevented_trades) == 1, "the answer shows the prevented trade"
    assert taker.prevented_trades[0].resting_order_id == (own.order_id if names_resting else 0)
    book = stub(c, 0, None).GetOrderBook(pb.GetOrderBookRequest(), timeout=CALL)
    assert [(lvl.price, lvl.size, lvl.order_count) for lvl in book.asks] == asks_after
    replay = replay_cluster(c)
    assert taker == replay.expected_answer(taker)
    trades = [e for events in replay.events["BTC-USD"].values() for e in events if isinstance(e, eng.OrderFilled)]
    assert all(t.maker_account != t.taker_account for t in trades)


def test_a_late_node_restored_from_a_snapshot_knows_every_owner(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(extra_node_args=["--snapshot-threshold", "50"])
    c.start(nodes=2)
    alice, bob = stub(c, 0, "alice"), stub(c, 1, "bob")
    mine = [alice.CreateOrder(pb.CreateOrderRequest(size=-1, limit_price=200 + n), timeout=CALL).order_id
            for n in range(40)]
    theirs = [bob.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=100 - n,
                                                    self_trade_prevention=types_pb2.DECREMENT), timeout=CALL).order_id
              for n in range(40)]
    c.wait_converged(nodes=[0, 1])
    c.start_node(2)
    assert "restored from node-" in c.nodes[2].read_log(), "the late node should start from a snapshot"
    late_alice, late_bob = stub(c, 2, "alice"), stub(c, 2, "bob")
    listed = late_alice.ListOrders(pb.ListOrdersRequest(page_size=1000), timeout=CALL)
    assert [o.order_id for o in listed.orders] == mine
    bobs = late_bob.ListOrders(pb.ListOrdersRequest(page_size=1000), timeout=CALL)
    assert [o.order_id for o in bobs.orders] == theirs
    assert status_of(lambda: late_bob.CancelOrder(pb.CancelOrderRequest(order_id=mine[0]), timeout=CALL)) == \
        grpc.StatusCode.PERMISSION_DENIED
    # bob's own sell meets his resting buys: the restored node prevents it exactly as the others do
    late_bob.CreateOrder(pb.CreateOrderRequest(size=-3, limit_price=90, self_trade_prevention=types_pb2.DECREMENT),
                         timeout=CALL)
    views = c.wait_converged()
    replay = replay_cluster(c)
    assert {m: (replay.engine.last_seq(m), replay.engine.checksum(m)) for m in views} == views


def test_with_consul_unreachable_nodes_keep_the_last_registry_say_so_and_never_fall_open(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster()
    c.start()
    assert all(c.status(i).accounts.fresh and c.status(i).accounts.loaded for i in range(3))
    c.consul.stop()
    try:
        wait_until(lambda: not any(c.status(i).accounts.fresh for i in range(3)), 20,
                   "every node to report its registry as not fresh while Consul is down")
        unknown = (("authorization", "Bearer pxk_not-a-key"),)
        for node in range(3):
            held = c.status(node).accounts
            assert held.loaded and held.active_accounts >= 2, "the last registry read is kept"
            placed = stub(c, node, "alice").CreateOrder(pb.CreateOrderRequest(size=1, limit_price=10 + node),
                                                        timeout=CALL)
            assert placed.order_id > 0, "a known key keeps working"
            anonymous = stub(c, node, None)
            assert status_of(partial(anonymous.CreateOrder, pb.CreateOrderRequest(size=1, limit_price=10),
                                     metadata=unknown, timeout=CALL)) == \
                grpc.StatusCode.UNAUTHENTICATED, "an unknown key is never let in"
    finally:
        c.consul.start()
        c.restore_accounts()  # the dev agent keeps nothing (a real Consul keeps its data)
    wait_until(lambda: all(c.status(i).accounts.fresh for i in range(3)), 30,
               "every node to read the registry again once Consul is back")
    views = c.wait_converged()
    replay = replay_cluster(c)
    assert {m: (replay.engine.last_seq(m), replay.engine.checksum(m)) for m in views} == views
