"""Property tests: invariants of the book checked after every command of random command sequences.

Orders belong to two accounts and "" (no account), with every self-trade prevention mode, so orders meet
orders of their own account all the time; cancels and amends come from any account, the owner or not.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine import (
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    Engine,
    MarketConfig,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderRejected,
    OrderRested,
    OrderType,
    PlaceOrder,
    SelfTradePrevention,
    Side,
)

M = "X"
PRICES = st.integers(min_value=96, max_value=104)  # a narrow range, so orders cross often
SIZES = st.integers(min_value=1, max_value=8)
IDS = st.integers(min_value=1, max_value=40)
ACCOUNTS = st.sampled_from(("", "a", "b"))
MODES = st.sampled_from(SelfTradePrevention)

# a command without its seq: the test numbers them
submit = st.tuples(st.just("submit"), st.sampled_from(Side), st.sampled_from(OrderType), SIZES, PRICES, ACCOUNTS, MODES)
cancel = st.tuples(st.just("cancel"), IDS, ACCOUNTS)
amend = st.tuples(st.just("amend"), IDS, st.integers(min_value=-1, max_value=8), st.none() | PRICES, ACCOUNTS)
OPS = st.lists(st.one_of(submit, submit, submit, cancel, amend), min_size=1, max_size=60)


def build(op: tuple, seq: int) -> Command:
    if op[0] == "submit":
        _, side, order_type, size, price, account, stp = op
        price = None if order_type is OrderType.MARKET else price
        return PlaceOrder(M, seq, side, order_type, size, price, account, stp)
    if op[0] == "cancel":
        return CancelOrder(M, seq, op[1], op[2])
    return AmendOrder(M, seq, op[1], op[2], op[3], op[4])


class Ledger:
    """What the events say about every order: quantity added, filled, cancelled, reduced (by an amend or by
    self-trade prevention); its owner; FIFO stamps. Checks each event against what came before it."""

    def __init__(self) -> None:
        self.added: dict[int, int] = defaultdict(int)
        self.filled: dict[int, int] = defaultdict(int)
        self.cancelled: dict[int, int] = defaultdict(int)
        self.reduced: dict[int, int] = defaultdict(int)
        self.owner: dict[int, str] = {}
        self.stamp: dict[int, int] = {}
        self.clock = 0
        self.total_traded = 0

    def open_size(self, order_id: int) -> int:
        return self.added[order_id] - self.filled[order_id] - self.cancelled[order_id] - self.reduced[order_id]

    def record(self, cmd: Command, events: list) -> None:
        for event in events:
            assert event.market == M and event.seq == cmd.seq
            kind = type(event)
            if kind is OrderAccepted:
                self.owner[event.order_id] = event.account
            if kind is OrderFilled:
                # never a trade between two orders of the same (non-empty) account
                assert not (event.maker_account and event.maker_account == event.taker_account), event
                assert event.maker_account == self.owner[event.maker_order_id]
                assert event.taker_account == self.owner[event.taker_order_id] == cmd.account
            else:  # the command's account; it owns the order (self-trade prevention: both orders)
                assert event.account == cmd.account, event
                assert kind is OrderRejected or event.account == self.owner[event.order_id], event
            if kind is OrderAccepted:
                self.added[event.order_id] += event.size
            elif kind is OrderFilled:
                self.filled[event.maker_order_id] += event.size
                self.filled[event.taker_order_id] += event.size
                self.total_traded += event.size
                assert event.maker_remaining == self.open_size(event.maker_order_id)
                assert event.taker_remaining == self.open_size(event.taker_order_id)
            elif kind is OrderCancelled:
                self.cancelled[event.order_id] += event.size
            elif kind is OrderReduced:
                assert event.reason is CancelReason.SELF_TRADE_PREVENTED
                self.reduced[event.order_id] += event.size
                assert event.remaining == self.open_size(event.order_id) > 0
            elif kind is OrderRested:
                if event.order_id not in self.stamp or isinstance(cmd, PlaceOrder):
                    self.clock += 1
                    self.stamp[event.order_id] = self.clock
            elif kind is OrderAmended:
                delta = event.size - self.open_size(event.order_id)
                if delta > 0:
                    self.added[event.order_id] += delta
                else:
                    self.reduced[event.order_id] -= delta
                if not event.priority_kept:
                    self.clock += 1
                    self.stamp[event.order_id] = self.clock
            else:
                assert kind is OrderRejected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_invariants_hold_after_every_command(ops: list[tuple]) -> None:
    engine = Engine([MarketConfig(M, max_price=1000, max_size=100)])
    ledger = Ledger()
    for seq, op in enumerate(ops, start=1):
        cmd = build(op, seq)
        before = list(engine.resting_orders(M))
        checksum_before = engine.checksum(M)
        events = engine.apply(cmd)
        ledger.record(cmd, events)
        engine.check_consistency()
        after = list(engine.resting_orders(M))
        assert all(view.account == ledger.owner[view.order_id] for view in after)

        # a FOK fills completely by trades or is rejected before anything changes
        if isinstance(cmd, PlaceOrder) and cmd.order_type is OrderType.FOK and type(events[0]) is OrderAccepted:
            assert all(type(e) is not OrderRejected for e in events)
            assert sum(e.size for e in events if type(e) is OrderFilled) == cmd.size
            assert not any(isinstance(e, (OrderCancelled, OrderReduced)) and e.order_id == cmd.seq for e in events)

        bids, asks = engine.depth(M, 1000)
        if bids and asks:
            assert bids[0][0] < asks[0][0], "book crossed"
        assert all(level[1] > 0 and level[2] > 0 for level in bids + asks), "empty level kept"

        # FIFO: at each price, resting orders are in the order they were accepted or re-queued
        by_level: dict[tuple[Side, int], list[int]] = defaultdict(list)
        for view in after:
            by_level[(view.side, view.price)].append(ledger.stamp[view.order_id])
        assert all(stamps == sorted(stamps) for stamps in by_level.values()), "FIFO broken"

        # per order: open = added - filled - cancelled - reduced; never more filled than size
        resting = {view.order_id: view for view in after}
        for order_id in ledger.added:
            open_size = ledger.open_size(order_id)
            assert open_size >= 0
            assert (resting[order_id].remaining if order_id in resting else 0) == open_size
        for view in after:
            assert view.filled == ledger.filled[view.order_id] and view.filled <= view.size
            assert view.remaining + view.filled == view.size
        # and in total: added = traded on both sides + cancelled + reduced + resting
        assert sum(ledger.added.values()) == (
            2 * ledger.total_traded
            + sum(ledger.cancelled.values())
            + sum(ledger.reduced.values())
            + sum(view.remaining for view in after)
        )

        # the checksum changes exactly when the resting book changes
        checksum_after = engine.checksum(M)
        if [tuple(v) for v in before] == [tuple(v) for v in after]:
            assert checksum_after == checksum_before
        elif [(v.order_id, v.price, v.remaining) for v in before] != [
            (v.order_id, v.price, v.remaining) for v in after
        ]:
            assert checksum_after != checksum_before
        if any(type(e) is OrderRejected for e in events):
            assert len(events) == 1 and checksum_after == checksum_before


@settings(max_examples=40, deadline=None)
@given(ops=OPS, cut=st.integers(min_value=0, max_value=60))
def test_snapshot_restore_anywhere_continues_identically(ops: list[tuple], cut: int) -> None:
    """Determinism (two engines, the same commands) and snapshot/restore at any point: the same events,
    owners included, the same checksums, the same snapshot bytes."""
    config = MarketConfig(M, max_price=1000, max_size=100)
    straight, split, again = Engine([config]), Engine([config]), Engine([config])
    for seq, op in enumerate(ops, start=1):
        if seq == cut:
            split = Engine.restore(split.snapshot())
            assert list(split.resting_orders(M)) == list(straight.resting_orders(M))
        cmd = build(op, seq)
        events = straight.apply(cmd)
        assert split.apply(cmd) == events
        assert again.apply(cmd) == events
        split.check_consistency()
    assert straight.checksum(M) == split.checksum(M) == again.checksum(M)
    assert straight.snapshot() == split.snapshot() == again.snapshot()
