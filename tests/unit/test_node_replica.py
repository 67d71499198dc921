"""The node's replica and request validation, without any server."""

from __future__ import annotations

import random
import re
from contextlib import AbstractContextManager
from typing import Any

import pytest

from exchange import engine as eng
from exchange.entry_signing import entry_is_authentic
from exchange.errors import FailedPrecondition, InvalidArgument, NotFound
from exchange.node import order_messages
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import signed_entry

MARKETS = [eng.MarketConfig("BTC-USD"), eng.MarketConfig("ETH-USD", tick_size=5, lot_size=2)]
# for validation: a market where every bound is its own, so a message quoting the wrong one cannot pass
STRICT = eng.MarketConfig("SOL-USD", tick_size=5, lot_size=2, min_price=50, max_price=500, min_size=4, max_size=100)
CONFIGS = {m.symbol: m for m in [*MARKETS, STRICT]}
SECRET = b"secret"


def entries(count: int, seed: int = 1) -> list[types_pb2.SequencedCommand]:
    rng = random.Random(seed)
    result = []
    for seq in range(1, count + 1):
        command = types_pb2.Command(
            market="BTC-USD",
            new_order=types_pb2.NewOrderCommand(
                side=rng.choice([types_pb2.BUY, types_pb2.SELL]), order_type=types_pb2.LIMIT,
                size=rng.randint(1, 9), price=rng.randint(95, 105),
            ),
            client_order_id=f"c{seq}",
        )
        result.append(signed_entry("BTC-USD", seq, command, SECRET))
    return result


def test_entries_offered_shuffled_and_repeated_give_the_same_book_as_in_order() -> None:
    log = entries(300)
    in_order = Replica(MARKETS)
    for entry in log:
        in_order.offer(entry)
    shuffled = Replica(MARKETS)
    arrivals = log * 2
    random.Random(7).shuffle(arrivals)
    for entry in arrivals:
        shuffled.offer(entry)
    assert shuffled.applied_seq("BTC-USD") == in_order.applied_seq("BTC-USD") == 300
    assert shuffled.checksum("BTC-USD") == in_order.checksum("BTC-USD")
    assert shuffled.first_gap("BTC-USD") is None


def test_entry_ahead_of_a_gap_is_buffered_until_the_gap_is_filled() -> None:
    log = entries(5)
    replica = Replica(MARKETS)
    assert replica.offer(log[0]) and replica.offer(log[3]) and replica.offer(log[4])
    assert replica.applied_seq("BTC-USD") == 1
    assert replica.first_gap("BTC-USD") == (2, 3)
    assert replica.lag("BTC-USD") == 4
    assert not replica.offer(log[3]), "a buffered entry offered again is already known"
    replica.offer(log[2])
    replica.offer(log[1])
    assert replica.applied_seq("BTC-USD") == 5 and replica.first_gap("BTC-USD") is None


def test_client_order_ids_and_journal_are_derived_from_the_log() -> None:
    log = entries(10)
    replica = Replica(MARKETS)
    for entry in log:
        replica.offer(entry)
    reference = eng.Engine(MARKETS)
    expected = [reference.apply(order_messages.engine_command(types_pb2.Command.FromString(e.command), e.seq))
                for e in log]
    assert replica.order_of_client_id("BTC-USD", "", "c4") == 4
    for entry, events in zip(log, expected, strict=True):
        applied = replica.journal_entry("BTC-USD", entry.seq)
        assert applied is not None
        assert (applied.seq, applied.command.SerializeToString(deterministic=True)) == (entry.seq, entry.command)
        assert applied.events == events, f"the journal holds the events the log's replay gives for {entry.seq}"
    assert replica.oldest_journaled("BTC-USD") == 1
    assert replica.journal_entry("BTC-USD", 11) is None


def test_the_journal_keeps_the_most_recent_commands_only() -> None:
    replica = Replica(MARKETS, journal_size=4)
    for entry in entries(10):
        replica.offer(entry)
    assert replica.oldest_journaled("BTC-USD") == 7
    assert replica.journal_entry("BTC-USD", 6) is None and replica.journal_entry("BTC-USD", 7) is not None
    with pytest.raises(FailedPrecondition, match="'c3' is order 3 of BTC-USD, whose result this node no longer"):
        replica.retained_result("BTC-USD", 3, "c3")
    assert replica.retained_result("BTC-USD", 8, "c8").seq == 8


def test_order_state_of_resting_filled_and_cancelled_orders() -> None:
    replica = Replica(MARKETS)

    def command(seq: int, **kind: Any) -> types_pb2.SequencedCommand:  # kind: new_order=..., cancel_order=...
        return signed_entry("BTC-USD", seq, types_pb2.Command(market="BTC-USD", client_order_id=f"o{seq}", **kind))

    new = types_pb2.NewOrderCommand
    replica.offer(command(1, new_order=new(side=types_pb2.SELL, order_type=types_pb2.LIMIT, size=5, price=100)))
    replica.offer(command(2, new_order=new(side=types_pb2.SELL, order_type=types_pb2.LIMIT, size=4, price=101)))
    replica.offer(command(3, new_order=new(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=7, price=101)))
    replica.offer(command(4, cancel_order=types_pb2.CancelOrderCommand(order_id=2)))
    filled, cancelled, taker = (replica.order_state("BTC-USD", i) for i in (1, 2, 3))
    assert filled is not None and (filled.status, filled.filled, filled.remaining) == (pb.FILLED, 5, 0)
    assert cancelled is not None and (cancelled.status, cancelled.size, cancelled.filled) == (pb.CANCELLED, 4, 2)
    assert taker is not None and (taker.status, taker.side, taker.filled, taker.remaining) == (
        pb.FILLED, types_pb2.BUY, 7, 0)
    assert taker.client_order_id == "o3" and replica.order_state("BTC-USD", 9) is None
    view = replica.view("BTC-USD")
    assert (view.applied_seq, view.resting_orders, view.lag, view.buffered) == (4, 0, 0, 0)


def test_forged_entry_fails_authentication() -> None:
    entry = entries(1)[0]
    assert entry_is_authentic(SECRET, entry)
    forged = types_pb2.SequencedCommand()
    forged.CopyFrom(entry)
    forged.seq = 2
    assert not entry_is_authentic(SECRET, forged)
    assert not entry_is_authentic(b"other secret", entry)


MAX = 2**62  # MarketConfig's default max_price and max_size


def _refused(error: type[Exception], message: str) -> AbstractContextManager[pytest.ExceptionInfo[Exception]]:
    """Expects exactly ``message``: the field it names and the bound it quotes, not merely a word of it."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    ("request_fields", "error", "message"),
    [
        ({"size": 0, "limit_price": 100}, InvalidArgument,
         "size must not be 0: give a positive size to buy or a negative size to sell (lots)"),
        ({"size": 5, "limit_price": 100, "side": 7}, InvalidArgument,
         "unknown side 7: use BUY (1) or SELL (2), or leave it unset"),
        ({"size": -5, "limit_price": 100, "side": types_pb2.BUY}, InvalidArgument,
         "side BUY contradicts the negative size -5: use a positive size to buy, or side SELL"),
        ({"size": 5, "limit_price": 100, "order_type": 9}, InvalidArgument,
         "unknown order_type 9: use one of LIMIT (1), MARKET (2), IOC (3), FOK (4), POST_ONLY (5)"),
        ({"size": 2, "limit_price": 100, "market": "SOL-USD"}, InvalidArgument,
         "size 2 is below SOL-USD's minimum size 4 (lots)"),
        ({"size": -102, "limit_price": 100, "market": "SOL-USD"}, InvalidArgument,
         "size 102 is above SOL-USD's maximum size 100 (lots)"),
        ({"size": -(2**63), "limit_price": 100}, InvalidArgument,
         f"size {2**63} is above BTC-USD's maximum size {MAX} (lots)"),
        ({"size": 5, "limit_price": 100, "market": "SOL-USD"}, InvalidArgument,
         "size 5 is not a multiple of SOL-USD's lot size 2"),
        ({"size": 5}, InvalidArgument, "this order type needs a positive limit_price (ticks)"),
        ({"size": 4, "market": "SOL-USD", "order_type": types_pb2.FOK}, InvalidArgument,
         "this order type needs a positive limit_price (ticks)"),
        ({"size": 5, "limit_price": -3}, InvalidArgument,
         f"limit_price -3 is outside BTC-USD's price bounds [1, {MAX}] (ticks)"),
        ({"size": 5, "limit_price": 100, "order_type": types_pb2.MARKET}, InvalidArgument,
         "a MARKET order takes no limit_price: leave it unset, or use a LIMIT or IOC order"),
        ({"size": 4, "limit_price": 505, "market": "SOL-USD"}, InvalidArgument,
         "limit_price 505 is outside SOL-USD's price bounds [50, 500] (ticks)"),
        ({"size": 4, "limit_price": 45, "market": "SOL-USD"}, InvalidArgument,
         "limit_price 45 is outside SOL-USD's price bounds [50, 500] (ticks)"),
        ({"size": 4, "limit_price": 101, "market": "SOL-USD"}, InvalidArgument,
         "limit_price 101 is not a multiple of SOL-USD's tick size 5"),
        ({"size": 5, "limit_price": 100, "market": "DOGE"}, NotFound,
         "unknown market 'DOGE'; this cluster trades: BTC-USD, ETH-USD, SOL-USD"),
        ({"size": 1, "limit_price": 100, "client_order_id": "x" * 65}, InvalidArgument,
         "client_order_id is 65 characters long; at most 64 are allowed"),
        ({"size": 1, "limit_price": 100, "client_order_id": "a\nb"}, InvalidArgument,
         "client_order_id must contain printable characters only"),
    ],
)
def test_bad_new_orders_are_refused_with_a_message_naming_the_field_and_the_bound(
    request_fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with _refused(error, message):
        order_messages.new_order_command(pb.CreateOrderRequest(**request_fields), CONFIGS, "node-1", "acct")


@pytest.mark.parametrize(
    ("request_fields", "error", "message"),
    [
        ({"order_id": 0, "size": 4}, InvalidArgument, "order_id must be positive (the order's sequence number), got 0"),
        ({"order_id": 1, "size": 0}, InvalidArgument,
         "size must be the new positive remaining size (lots), got 0; to remove an order, cancel it"),
        ({"order_id": 1, "size": -4}, InvalidArgument,
         "size must be the new positive remaining size (lots), got -4; to remove an order, cancel it"),
        ({"order_id": 1, "size": 102, "market": "SOL-USD"}, InvalidArgument,
         "size 102 is above SOL-USD's maximum size 100 (lots)"),
        ({"order_id": 1, "size": 5, "market": "SOL-USD"}, InvalidArgument,
         "size 5 is not a multiple of SOL-USD's lot size 2"),
        ({"order_id": 1, "size": 4, "limit_price": 505, "market": "SOL-USD"}, InvalidArgument,
         "limit_price 505 is outside SOL-USD's price bounds [50, 500] (ticks)"),
        ({"order_id": 1, "size": 4, "limit_price": 52, "market": "SOL-USD"}, InvalidArgument,
         "limit_price 52 is not a multiple of SOL-USD's tick size 5"),
        ({"order_id": 1, "size": 4, "limit_price": -3}, InvalidArgument,
         f"limit_price -3 is outside BTC-USD's price bounds [1, {MAX}] (ticks)"),
        ({"order_id": 1, "size": 4, "market": "DOGE"}, NotFound,
         "unknown market 'DOGE'; this cluster trades: BTC-USD, ETH-USD, SOL-USD"),
    ],
)
def test_bad_amends_are_refused_with_a_message_naming_the_field_and_the_bound(
    request_fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with _refused(error, message):
        order_messages.amend_command(pb.AmendOrderRequest(**request_fields), CONFIGS, "node-1", "acct")


def test_an_amend_below_min_size_passes_validation_and_the_engine_accepts_it() -> None:
    """min_size is not applied to an amend (see exchange.engine): it may shrink an order like a partial cancel."""
    engine = eng.Engine([STRICT])
    engine.apply(eng.PlaceOrder("SOL-USD", 1, eng.Side.BUY, eng.OrderType.LIMIT, 10, 100, "acct"))
    request = pb.AmendOrderRequest(market="SOL-USD", order_id=1, size=2)
    command = order_messages.amend_command(request, CONFIGS, "node-1", "acct")
    amended = eng.OrderAmended("SOL-USD", 2, 1, 100, 2, True, "acct")
    assert engine.apply(order_messages.engine_command(command, 2)) == [amended]


def test_bad_cancels_are_refused_with_a_message_naming_the_field() -> None:
    with _refused(InvalidArgument, "order_id must be positive (the order's sequence number), got -1"):
        order_messages.cancel_command(pb.CancelOrderRequest(order_id=-1), CONFIGS, "node-1", "acct")
    with _refused(NotFound, "unknown market 'DOGE'; this cluster trades: BTC-USD, ETH-USD, SOL-USD"):
        order_messages.cancel_command(pb.CancelOrderRequest(market="DOGE", order_id=1), CONFIGS, "node-1", "acct")


def test_protobuf_enum_values_are_the_engines() -> None:
    """convert decodes protobuf's numbers with the engine's maps (eng.SIDES, eng.ORDER_TYPES): they must agree."""
    assert {n: v for n, v in types_pb2.Side.items() if v} == {s.name: s.value for s in eng.Side}
    assert {n: v for n, v in types_pb2.OrderType.items() if v} == {t.name: t.value for t in eng.OrderType}


def test_side_comes_from_the_sign_of_size_when_unset() -> None:
    sell = order_messages.new_order_command(pb.CreateOrderRequest(size=-10, limit_price=100), CONFIGS, "n", "acct")
    buy = order_messages.new_order_command(pb.CreateOrderRequest(size=10, limit_price=100), CONFIGS, "n", "acct")
    assert (sell.market, sell.new_order.side, sell.new_order.size) == ("BTC-USD", types_pb2.SELL, 10)
    assert (buy.new_order.side, buy.new_order.order_type) == (types_pb2.BUY, types_pb2.LIMIT)


def test_create_order_response_summarises_the_events() -> None:
    engine = eng.Engine(MARKETS)
    engine.apply(eng.PlaceOrder("BTC-USD", 1, eng.Side.SELL, eng.OrderType.LIMIT, 4, 100))
    events = engine.apply(eng.PlaceOrder("BTC-USD", 2, eng.Side.BUY, eng.OrderType.IOC, 10, 100))
    command = types_pb2.Command(market="BTC-USD", new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY))
    response = order_messages.create_order_response(command, 2, events, duplicate=False)
    assert (response.status, response.filled_size, response.cancelled_size) == (pb.CANCELLED, 4, 6)
    assert [(t.price, t.size, t.maker_order_id) for t in response.trades] == [(100, 4, 1)]


def test_replica_adopts_a_peers_snapshot_then_applies_the_rest_of_the_log() -> None:
    log = entries(400)
    peer = Replica(MARKETS)
    for entry in log[:300]:
        peer.offer(entry)
    late = Replica(MARKETS)
    late.offer(log[350])  # a broadcast that arrived early stays buffered across the adoption
    late.offer(log[10])  # ... and one the snapshot covers is dropped
    engine_bytes, ids = peer.snapshot()

    assert late.adopt(engine_bytes, ids)

    assert late.applied_seq("BTC-USD") == 300
    assert late.checksum("BTC-USD") == peer.checksum("BTC-USD")
    assert late.order_of_client_id("BTC-USD", "", "c42") == 42
    assert late.first_gap("BTC-USD") == (301, 350)
    for entry in log[300:]:
        late.offer(entry)
    reference = Replica(MARKETS)
    for entry in log:
        reference.offer(entry)
    assert late.checksum("BTC-USD") == reference.checksum("BTC-USD")


def test_an_adopted_snapshot_lists_each_accounts_orders_oldest_first() -> None:
    """ListOrders pages by order id (the page token is the last id): after an adoption each account's orders must
    still be kept oldest first, not in the book's priority order, or a page skips the older ones."""
    peer = Replica(MARKETS)
    prices = [99, 101, 100, 98, 102]  # bids: each better than the one before or not, so priority != age
    for seq, price in enumerate(prices, start=1):
        command = types_pb2.Command(market="BTC-USD", account="alice", new_order=types_pb2.NewOrderCommand(
            side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=price))
        peer.offer(signed_entry("BTC-USD", seq, command, SECRET))
    late = Replica(MARKETS)
    assert late.adopt(*peer.snapshot())
    for replica in (peer, late):
        pages, after = [], 0
        while page := replica.resting_orders_of("BTC-USD", "alice", after, limit=2):
            pages.append([order.order_id for order in page])
            after = page[-1].order_id
        assert pages == [[1, 2], [3, 4], [5]]


def test_replica_refuses_a_snapshot_behind_it_or_of_other_markets() -> None:
    log = entries(50)
    ahead, behind = Replica(MARKETS), Replica(MARKETS)
    for entry in log:
        ahead.offer(entry)
    for entry in log[:20]:
        behind.offer(entry)
    assert not ahead.adopt(*behind.snapshot())
    assert ahead.applied_seq("BTC-USD") == 50
    other = Replica([eng.MarketConfig("BTC-USD")])
    with pytest.raises(ValueError, match="markets"):
        ahead.adopt(*other.snapshot())
    with pytest.raises(ValueError):
        ahead.adopt(b"garbage", [])


def test_a_peer_snapshot_whose_market_data_is_nested_too_deep_is_adopted_with_fresh_market_data() -> None:
    """Market data the node cannot read starts afresh at the snapshot's sequence (its docstring); json's
    RecursionError had escaped adopt, after it had already switched to the new engine."""
    replica, peer = Replica([eng.MarketConfig("BTC-USD")]), Replica([eng.MarketConfig("BTC-USD")])
    peer.offer(signed_entry("BTC-USD", 1, types_pb2.Command(market="BTC-USD", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=100))))
    engine_snapshot, client_order_ids = peer.snapshot()
    assert replica.adopt(engine_snapshot, client_order_ids, b"[" * 100_000 + b"]" * 100_000)
    assert replica.applied_seq("BTC-USD") == 1 and replica.market_data.tape("BTC-USD").seq == 1
