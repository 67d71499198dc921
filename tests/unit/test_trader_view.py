"""A trader's own view on one replica (GetOrder, ListOrders, StreamOrders, StreamEvents), fed signed log entries
in-process: what a finished order shows, paging, what a stream may show and when it must end instead of skipping.
Most cases were found by a review against CONTRACT.md and the proto's comments (2026-12-02)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import engine as eng
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.node.auth import AccessControl, AccountRegistry
from exchange.node.lifecycle import SERVING, SYNCING, NodeState
from exchange.node.reads import ReadRPCs
from exchange.node.replica import Replica
from exchange.node.trader_view import TraderViewRPCs
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import SECRET, Aborted, FakeContext, InMemorySequencer, RecordingPeers, run_scenario, signed_entry

M = "BTC-USD"
KEYS = {"alice": new_api_key(), "bob": new_api_key()}
NEW = types_pb2.NewOrderCommand


def as_account(name: str) -> FakeContext:
    return FakeContext((("authorization", f"Bearer {KEYS[name]}"),))


def access() -> AccessControl:
    registry = AccountRegistry(SECRET)
    registry.update({ACCOUNTS_PREFIX + name: encode(SECRET, Account(name, True, (key_hash(key),)))
                     for name, key in KEYS.items()})
    return AccessControl(registry, None)


class Feed:
    """A replica fed sequenced commands one by one."""

    def __init__(self, journal_size: int = 1000) -> None:
        self.replica = Replica([eng.MarketConfig(M)], journal_size=journal_size)
        self.seq = 0

    def put(self, account: str, client_order_id: str = "", **kind: Any) -> int:
        self.seq += 1
        command = types_pb2.Command(market=M, account=account, client_order_id=client_order_id, **kind)
        self.replica.offer(signed_entry(M, self.seq, command))
        assert self.replica.applied_seq(M) == self.seq
        return self.seq

    def limit(self, account: str, side: types_pb2.Side, size: int, price: int, client_order_id: str = "") -> int:
        return self.put(account, client_order_id,
                        new_order=NEW(side=side, order_type=types_pb2.LIMIT, size=size, price=price))

    def amend(self, account: str, order_id: int, size: int, price: int = 0) -> int:
        return self.put(account, amend_order=types_pb2.AmendOrderCommand(order_id=order_id, new_size=size,
                                                                         new_price=price))

    def cancel(self, account: str, order_id: int) -> int:
        return self.put(account, cancel_order=types_pb2.CancelOrderCommand(order_id=order_id))


def view_of(replica: Replica, state: str = SERVING) -> TraderViewRPCs:
    return TraderViewRPCs(NodeState("node-1", state), replica, access())


def get_order(replica: Replica, order_id: int, who: str = "alice") -> pb.Order:
    return run_scenario(view_of(replica).GetOrder(pb.GetOrderRequest(order_id=order_id), as_account(who)))


# -- 1. GetOrder of a finished order that was amended ------------------------------------------------------

def test_getorder_of_an_amended_then_cancelled_order_reports_no_fill_that_never_happened() -> None:
    feed = Feed()
    order = feed.limit("alice", types_pb2.BUY, 10, 100)
    feed.amend("alice", order, 4)  # reduced to 4 open, nothing ever traded
    resting = get_order(feed.replica, order)
    assert (resting.status, resting.filled_size, resting.remaining_size) == (pb.RESTING, 0, 4)
    feed.cancel("alice", order)
    cancelled = get_order(feed.replica, order)
    assert cancelled.status == pb.CANCELLED
    assert cancelled.filled_size == 0, f"no trade ever happened, GetOrder says filled_size={cancelled.filled_size}"


def test_getorder_of_an_enlarged_then_cancelled_order_has_a_negative_fill() -> None:
    feed = Feed()
    order = feed.limit("alice", types_pb2.BUY, 10, 100)
    feed.amend("alice", order, 20)  # enlarged (re-queued), nothing traded
    feed.cancel("alice", order)
    cancelled = get_order(feed.replica, order)
    assert cancelled.filled_size == 0, f"filled_size={cancelled.filled_size}"


def test_getorder_of_an_order_filled_by_its_amend_reports_what_it_traded_at_its_price() -> None:
    feed = Feed()
    order = feed.limit("alice", types_pb2.BUY, 10, 100)
    feed.limit("bob", types_pb2.SELL, 5, 101)
    feed.amend("alice", order, 5, 101)  # crosses: trades 5 @ 101 and is filled
    filled = get_order(feed.replica, order)
    assert filled.status == pb.FILLED
    assert (filled.filled_size, filled.price) == (5, 101), (filled.filled_size, filled.price)


def test_getorder_of_a_partly_filled_order_that_its_amend_filled_counts_both_fills() -> None:
    feed = Feed()
    order = feed.limit("alice", types_pb2.BUY, 5, 100)
    feed.limit("bob", types_pb2.SELL, 2, 100)  # alice: 2 filled, 3 open
    feed.limit("bob", types_pb2.SELL, 3, 101)
    feed.amend("alice", order, 3, 101)  # crosses: the other 3 @ 101, and it is filled
    filled = get_order(feed.replica, order)
    assert (filled.status, filled.filled_size, filled.size, filled.price) == (pb.FILLED, 5, 5, 101)


# -- 2. ListOrders: a page_token that str.isdigit() accepts but int() refuses ------------------------------

def test_listorders_with_a_malformed_page_token_is_invalid_argument_not_internal() -> None:
    feed = Feed()
    feed.limit("alice", types_pb2.BUY, 1, 100)
    with pytest.raises(Aborted) as refused:
        run_scenario(view_of(feed.replica).ListOrders(pb.ListOrdersRequest(page_token="\u00b2"), as_account("alice")))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, refused.value


# -- 3. StreamEvents resumed near the window's edge: the journal moves on while it is replayed -------------

def test_streamevents_replay_overtaken_by_the_window_is_out_of_range_not_internal() -> None:
    """The journal moves on while a resumed stream replays it: the stream ends with OUT_OF_RANGE (resume later)."""
    feed = Feed(journal_size=3)
    for price in (10, 11, 12):
        feed.limit("alice", types_pb2.BUY, 1, price)
    reads = ReadRPCs(NodeState("node-1", SERVING), feed.replica, {}, InMemorySequencer(), RecordingPeers(), None)

    async def scenario() -> list[int]:
        stream = reads.StreamEvents(pb.StreamEventsRequest(from_seq=1), FakeContext()).__aiter__()
        seen = [(await stream.__anext__()).seq]  # seq 1 (its accepted event)
        for price in (13, 14, 15):  # the exchange goes on while the client reads: 1..3 leave the window
            feed.limit("alice", types_pb2.BUY, 1, price)
        for _ in range(10):
            seen.append((await stream.__anext__()).seq)
        return seen

    with pytest.raises(Aborted) as ended:
        run_scenario(scenario())
    assert ended.value.code == grpc.StatusCode.OUT_OF_RANGE, "not an assertion's INTERNAL"


# -- 4. StreamOrders: a maker's fill carries the taker's (another account's) client_order_id ---------------

def test_streamorders_fill_of_a_resting_order_does_not_show_another_accounts_client_order_id() -> None:
    feed = Feed()
    feed.limit("alice", types_pb2.SELL, 5, 100, client_order_id="alice-ask")
    feed.limit("bob", types_pb2.BUY, 5, 100, client_order_id="bob-private-strategy-7")

    async def scenario() -> list[pb.OrderEvent]:
        stream = view_of(feed.replica).StreamOrders(pb.StreamOrdersRequest(from_seq=1), as_account("alice"))
        iterator = stream.__aiter__()
        return [await iterator.__anext__() for _ in range(3)]  # accepted, rested (seq 1), fill (seq 2)

    events = run_scenario(scenario())
    assert [event.client_order_id for event in events[:2]] == ["alice-ask", "alice-ask"]  # her own command's
    fill = events[2]
    assert fill.WhichOneof("event") == "fill" and fill.fill.maker
    assert fill.client_order_id == "", f"alice's stream shows bob's client_order_id on her fill: {fill}"


# -- 5. GetOrder from a node still catching up ------------------------------------------------------------

def test_getorder_on_a_syncing_node_is_unavailable_like_listorders() -> None:
    feed = Feed()
    order = feed.limit("alice", types_pb2.BUY, 1, 100)  # the log may already hold its fill; this node lags
    view = view_of(feed.replica, SYNCING)
    with pytest.raises(Aborted) as listing:
        run_scenario(view.ListOrders(pb.ListOrdersRequest(), as_account("alice")))
    assert listing.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Aborted) as getting:
        run_scenario(view.GetOrder(pb.GetOrderRequest(order_id=order), as_account("alice")))
    assert getting.value.code == grpc.StatusCode.UNAVAILABLE


# -- 6. An event stream open across an adoption ------------------------------------------------------------

def test_streamevents_open_across_a_snapshot_adoption_never_skips_sequences() -> None:
    """A node serves event streams while it catches up; adopting a peer's snapshot jumps its log ahead."""
    late, peer = Feed(), Feed()
    for feed in (late, peer):
        feed.limit("alice", types_pb2.BUY, 1, 10)
        feed.limit("alice", types_pb2.BUY, 1, 11)
    for price in (12, 13, 14):
        peer.limit("alice", types_pb2.BUY, 1, price)
    reads = ReadRPCs(NodeState("node-1", SYNCING), late.replica, {}, InMemorySequencer(), RecordingPeers(), None)

    async def scenario() -> list[int]:
        stream = reads.StreamEvents(pb.StreamEventsRequest(from_seq=1), FakeContext()).__aiter__()
        seen = [(await stream.__anext__()).seq for _ in range(4)]  # seqs 1 and 2: accepted + rested each
        assert late.replica.adopt(*peer.replica.snapshot())  # at seq 5
        late.seq = 5
        late.limit("alice", types_pb2.BUY, 1, 15)  # seq 6
        seen += [(await stream.__anext__()).seq for _ in range(2)]
        return seen

    with pytest.raises(Aborted) as ended:
        run_scenario(scenario())
    assert ended.value.code == grpc.StatusCode.OUT_OF_RANGE, "the stream ends rather than skip seqs 3..5"


# -- what was right already ------------------------------------------------------------------------------

def test_listorders_pages_oldest_first_across_requeueing_amends() -> None:
    feed = Feed()
    ids = [feed.limit("alice", types_pb2.BUY, 1, 100 + i) for i in range(5)]
    feed.limit("bob", types_pb2.BUY, 1, 90)
    feed.amend("alice", ids[1], 3)  # enlarged: re-queued
    feed.amend("alice", ids[0], 1, 95)  # new price: re-queued
    view = view_of(feed.replica)
    pages, token = [], ""
    while True:
        page = run_scenario(view.ListOrders(pb.ListOrdersRequest(page_size=2, page_token=token), as_account("alice")))
        pages.append([o.order_id for o in page.orders])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[1, 2], [3, 4], [5]]


def test_getorder_of_another_accounts_finished_order_is_permission_denied() -> None:
    feed = Feed()
    order = feed.limit("bob", types_pb2.BUY, 1, 100)
    feed.cancel("bob", order)
    with pytest.raises(Aborted) as refused:
        get_order(feed.replica, order, "alice")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_client_order_ids_windows_and_resume_edges() -> None:
    feed = Feed(journal_size=3)
    a = feed.limit("alice", types_pb2.BUY, 1, 10, client_order_id="k")
    b = feed.limit("bob", types_pb2.BUY, 1, 11, client_order_id="k")
    assert feed.replica.order_of_client_id(M, "alice", "k") == a
    assert feed.replica.order_of_client_id(M, "bob", "k") == b
    rejected = feed.put("alice", new_order=NEW(side=types_pb2.BUY, order_type=types_pb2.POST_ONLY, size=1, price=0))
    assert get_order(feed.replica, rejected).status == pb.REJECTED
    for p in (12, 13, 14):
        feed.limit("alice", types_pb2.BUY, 1, p)
    assert feed.replica.order_of_client_id(M, "alice", "k") is None  # left the window
    c = feed.limit("alice", types_pb2.BUY, 1, 15, client_order_id="k")
    assert feed.replica.order_of_client_id(M, "alice", "k") == c
    with pytest.raises(Aborted) as gone:
        get_order(feed.replica, rejected)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    assert get_order(feed.replica, a).client_order_id == "k"  # resting, outside the window
    oldest = feed.replica.oldest_journaled(M)
    reads = ReadRPCs(NodeState("node-1", SERVING), feed.replica, {}, InMemorySequencer(), RecordingPeers(), None)

    async def first(from_seq: int) -> int:
        return (await reads.StreamEvents(pb.StreamEventsRequest(from_seq=from_seq), FakeContext()).__aiter__()
                .__anext__()).seq
    assert run_scenario(first(oldest)) == oldest
    with pytest.raises(Aborted) as old:
        run_scenario(first(oldest - 1))
    assert old.value.code == grpc.StatusCode.OUT_OF_RANGE
    late = Replica([eng.MarketConfig(M)], journal_size=3)
    assert late.adopt(*feed.replica.snapshot())
    assert view_of(late).markets and run_scenario(view_of(late).GetOrder(
        pb.GetOrderRequest(order_id=a), as_account("alice"))).client_order_id == "k"
    listed = run_scenario(view_of(late).ListOrders(pb.ListOrdersRequest(), as_account("alice")))
    assert [o.order_id for o in listed.orders] == [1, 4, 5, 6, 7]


# -- a finished order, against what its events say ----------------------------------------------------------

STEPS = st.lists(st.tuples(
    st.sampled_from(["new", "new", "new", "amend", "cancel"]), st.sampled_from(["alice", "bob"]),
    st.sampled_from([types_pb2.BUY, types_pb2.SELL]), st.integers(1, 8), st.integers(98, 102),
    st.sampled_from([types_pb2.LIMIT, types_pb2.LIMIT, types_pb2.MARKET, types_pb2.IOC, types_pb2.FOK,
                     types_pb2.POST_ONLY]),
    st.sampled_from([types_pb2.SELF_TRADE_PREVENTION_UNSPECIFIED, types_pb2.CANCEL_TAKER, types_pb2.CANCEL_MAKER,
                     types_pb2.CANCEL_BOTH, types_pb2.DECREMENT]),
    st.integers(1, 30),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_a_finished_orders_size_filled_size_and_price_are_what_its_events_say(steps: list[tuple[Any, ...]]) -> None:
    """Whatever amends, self-trade preventions, partial fills and cancels an order went through: its filled size is
    the sum of its trades, its size that plus what was cancelled of it, its price its last (GetOrder)."""
    feed = Feed()
    submitted: dict[int, tuple[int, int]] = {}  # order id -> its submit's (size, price)
    filled: dict[int, int] = {}
    price: dict[int, int] = {}
    ended: dict[int, tuple[pb.OrderStatus, int]] = {}  # order id -> (status, cancelled size)
    owners: dict[int, str] = {}
    for kind, account, side, size, limit, order_type, stp, target in steps:
        if kind != "new" and submitted:  # one of the orders, by its owner
            target = list(submitted)[target % len(submitted)]
            account = owners[target]
        if kind == "new":
            limit = 0 if order_type == types_pb2.MARKET else limit
            seq = feed.put(account, new_order=NEW(side=side, order_type=order_type, size=size, price=limit,
                                                  self_trade_prevention=stp))
            submitted[seq], price[seq], owners[seq] = (size, limit), limit, account
        elif kind == "amend":
            seq = feed.amend(account, target, size, limit)
        else:
            seq = feed.cancel(account, target)
        journaled = feed.replica.journal_entry(M, seq)
        assert journaled is not None
        for event in journaled.events:
            if isinstance(event, eng.OrderFilled):
                for order_id, remaining in ((event.maker_order_id, event.maker_remaining),
                                            (event.taker_order_id, event.taker_remaining)):
                    filled[order_id] = filled.get(order_id, 0) + event.size
                    if remaining == 0:
                        ended[order_id] = (pb.FILLED, 0)
            elif isinstance(event, eng.OrderCancelled):
                ended[event.order_id] = (pb.CANCELLED, event.size)
            elif isinstance(event, eng.OrderRejected) and kind == "new":
                ended[seq] = (pb.REJECTED, 0)
            elif isinstance(event, eng.OrderAmended):
                price[event.order_id] = event.price
    for order_id, (status, cancelled) in ended.items():
        state = feed.replica.order_state(M, order_id)
        assert state is not None and state.status == status, (order_id, state)
        done = filled.get(order_id, 0)
        size = submitted[order_id][0] if status == pb.REJECTED else done + cancelled
        assert (state.filled, state.size, state.price, state.remaining) == (done, size, price[order_id], 0), order_id
