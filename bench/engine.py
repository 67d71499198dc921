"""Engine benchmark: our matching engine against a pure-Python floor and two PyPI peers, on one stream.

The stream (deterministic, fixed seed, generated once and never timed) is ~70% passive limit orders near a
drifting mid price, ~20% aggressive limit orders crossing one or more levels and ~10% cancels of orders
that are still resting (the generator runs the floor book to know which ids are live). Every order belongs
to one of ``ACCOUNTS``, with the default self-trade prevention (CANCEL_TAKER), so some aggressive orders
meet a resting order of their own account and stop there; cancels come from the order's owner.

Implementations, each run on a fresh book, best of ``repeat`` timed runs after a warm-up run:

* ``engine``: ``exchange.engine.Engine.apply`` on prebuilt commands, producing every event;
* ``floor``: the least work any correct price-time book must do in pure Python: a ``SortedDict`` price ->
  ``deque`` per side, a dict index for cancels (tombstones, with the upkeep that keeps the best price right
  and memory bounded: see ``FloorBook``), walking levels and computing trade sizes, no events, no
  validation, no sequencing; self-trade prevention is one comparison per maker met. Its fill count and
  traded volume must equal the engine's;
* ``liquibook`` (C++ through SWIG, a Python ``on_fill`` callback counting fills) and
  ``lightmatchingengine`` (pure Python), when installed; otherwise reported as skipped. They know no
  accounts: they run the stream with self-trade prevention resolved in advance (``Stream.peer_ops``: an
  order that self-trade prevention stops is sent with the size it traded, or left out if that is 0), which
  trades exactly like the stream, and their rate counts the operations they ran.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedDict

from exchange.engine import (
    CancelOrder,
    CancelReason,
    Command,
    Engine,
    MarketConfig,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderType,
    PlaceOrder,
    Side,
)
from exchange.node.replica import Replica
from exchange.runtime import GC_THRESHOLDS
from exchange.v1 import types_pb2

MARKET = "BENCH"
SEED = 20240601

# one stream operation: (oid, is_buy, price, size, account) for a limit order, (oid, None, 0, 0, owner) for a
# cancel of oid; the peers' operations have no account
Op = tuple[int, bool | None, int, int, str]
PeerOp = tuple[int, bool | None, int, int]

ACCOUNTS = tuple(f"trader-{n}" for n in range(1, 17))


# ------------------------------------------------------------------------------------------------ floor


class FloorBook:
    """The minimum *correct* price-time book (see the module docstring).

    Orders are ``[remaining, order_id, key, account]`` lists (key: ``-price`` for bids, ``price`` for asks);
    every order has an account, and one that meets a resting order of its own account stops there, its
    remainder cancelled (self-trade prevention's default, CANCEL_TAKER). A cancel
    only marks the order (``remaining = 0``, a tombstone); the book stays correct for a reader with the least
    upkeep, the same guarantees the engine gives:

    * the front order of every level is live, so a level is in the ``SortedDict`` exactly while it holds a live
      order and ``peekitem(0)`` is the true best price (a cancel at the front pops it and the tombstones behind
      it, dropping the level when nothing is left; a fill does the same when it empties the front);
    * tombstones behind the front are counted per level and the level is rebuilt when they outnumber its live
      orders by more than ``_SLACK``, so memory stays proportional to the resting orders (without this, a
      level whose front order never trades keeps every cancelled order behind it forever).
    """

    _SLACK = 16

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # key -price: best bid first
        self.asks: SortedDict = SortedDict()  # key price: best ask first
        self.bid_tombs: dict[int, int] = {}  # key -> tombstones behind the front of that level
        self.ask_tombs: dict[int, int] = {}
        self.index: dict[int, list] = {}  # oid -> [remaining, order_id, key, account]
        self.fills = 0
        self.volume = 0
        self.prevented = 0

    def limit(self, oid: int, is_buy: bool, price: int, size: int, account: str) -> int | None:
        """Match against the opposite side, then rest the remainder. Returns None, or what the order traded
        if self-trade prevention stopped it."""
        if is_buy:
            opposite, tombs, limit_key, own, own_key = self.asks, self.ask_tombs, price, self.bids, -price
        else:
            opposite, tombs, limit_key, own, own_key = self.bids, self.bid_tombs, -price, self.asks, price
        index = self.index
        fills = volume = 0
        stopped = False
        while size and opposite:
            best, queue = opposite.peekitem(0)
            if best > limit_key:
                break
            while size and queue:  # the front order is live
                maker = queue[0]
                if maker[3] == account:  # its own: the remainder is cancelled
                    stopped = True
                    break
                available = maker[0]
                if available <= size:
                    size -= available
                    volume += available
                    maker[0] = 0
                    queue.popleft()
                    del index[maker[1]]
                    while queue and not queue[0][0]:  # keep the front live
                        queue.popleft()
                        tombs[best] -= 1
                else:
                    maker[0] = available - size
                    volume += size
                    size = 0
                fills += 1
            if not queue:
                del opposite[best]
                tombs.pop(best, None)
            if stopped:
                break
        if fills:
            self.fills += fills
            self.volume += volume
        if stopped:
            self.prevented += 1
            return volume
        if size:
            order = [size, oid, own_key, account]
            queue = own.get(own_key)
            if queue is None:
                queue = own[own_key] = deque()
            queue.append(order)
            index[oid] = order
        return None

    def cancel(self, oid: int) -> None:
        order = self.index.pop(oid, None)
        if order is None:
            return
        order[0] = 0
        key = order[2]
        side, tombs = (self.bids, self.bid_tombs) if key < 0 else (self.asks, self.ask_tombs)
        queue = side[key]
        if queue[0] is order:  # pop it and the tombstones behind it; drop the level if nothing is left
            queue.popleft()
            while queue and not queue[0][0]:
                queue.popleft()
                tombs[key] -= 1
            if not queue:
                del side[key]
                tombs.pop(key, None)
        else:
            count = tombs[key] = tombs.get(key, 0) + 1
            if count > len(queue) - count + self._SLACK:  # compact
                side[key] = deque([o for o in queue if o[0]])
                del tombs[key]


# ----------------------------------------------------------------------------------------------- stream


@dataclass
class Stream:
    ops: list[Op]
    peer_ops: list[PeerOp]  # the same, for the peers: self-trade prevention resolved (module docstring)
    passive: int
    aggressive: int
    cancels: int
    prevented: int  # orders that self-trade prevention stopped
    resting_at_end: int
    levels_at_end: tuple[int, int]


def make_stream(count: int, seed: int = SEED) -> Stream:
    """The benchmark stream. Order ids are 1..count, equal to the engine's seq numbers."""
    rng = random.Random(seed)
    book = FloorBook()
    live: list[int] = []  # ids that may be live; filled ones are dropped lazily when drawn
    owner: dict[int, str] = {}
    mid = 10_000
    ops: list[Op] = []
    peer_ops: list[PeerOp] = []
    passive = aggressive = cancels = 0
    for oid in range(1, count + 1):
        if rng.random() < 0.05:
            mid += rng.choice((-1, 1))
        roll = rng.random()
        if roll < 0.10:
            while live:
                i = rng.randrange(len(live))
                live[i], live[-1] = live[-1], live[i]
                target = live.pop()
                if target in book.index:
                    ops.append((target, None, 0, 0, owner.pop(target)))
                    peer_ops.append((target, None, 0, 0))
                    book.cancel(target)
                    cancels += 1
                    break
            else:
                roll = 0.5  # nothing to cancel: place a passive order instead
        if roll >= 0.10:
            is_buy = rng.random() < 0.5
            if roll < 0.30:  # aggressive: through the touch, up to a few levels deep
                depth = rng.randint(0, 3)
                price = mid + 1 + depth if is_buy else mid - 1 - depth
                size = rng.randint(5, 40)
                aggressive += 1
            else:  # passive: a few dozen levels either side of the mid
                distance = rng.randint(1, 30)
                price = mid - distance if is_buy else mid + distance
                size = rng.randint(1, 10)
                passive += 1
            account = rng.choice(ACCOUNTS)
            ops.append((oid, is_buy, price, size, account))
            traded = book.limit(oid, is_buy, price, size, account)
            if traded is None:
                peer_ops.append((oid, is_buy, price, size))
            elif traded:
                peer_ops.append((oid, is_buy, price, traded))
            if oid in book.index:
                live.append(oid)
                owner[oid] = account
        if len(ops) != oid:
            raise AssertionError("one operation per id")
    return Stream(
        ops, peer_ops, passive, aggressive, cancels, book.prevented, len(book.index), (len(book.bids), len(book.asks))
    )


# ------------------------------------------------------------------------------------------- contenders


@dataclass
class Outcome:
    seconds: float
    fills: int
    volume: int
    ops: int  # operations run (the peers run ``Stream.peer_ops``)


def _commands(ops: list[Op]) -> list[Command]:
    commands: list[Command] = []
    for seq, (oid, is_buy, price, size, account) in enumerate(ops, start=1):
        if is_buy is None:
            commands.append(CancelOrder(MARKET, seq, oid, account))
        else:
            side = Side.BUY if is_buy else Side.SELL
            commands.append(PlaceOrder(MARKET, seq, side, OrderType.LIMIT, size, price, account))
    return commands


def run_engine(stream: Stream) -> Callable[[], Outcome]:
    commands = _commands(stream.ops)

    def once() -> Outcome:
        engine = Engine([MarketConfig(MARKET)])
        apply = engine.apply
        start = time.perf_counter()
        for command in commands:
            apply(command)
        seconds = time.perf_counter() - start
        return Outcome(seconds, -1, -1, len(commands))

    return once


def engine_reference(stream: Stream) -> Outcome:
    """The engine's fills and volume over the stream (untimed, its consistency checked): what the others must match."""
    commands = _commands(stream.ops)
    engine = Engine([MarketConfig(MARKET)])
    fills = volume = prevented = 0
    for command in commands:
        for event in engine.apply(command):
            if type(event) is OrderFilled:
                fills += 1
                volume += event.size
            elif type(event) is OrderCancelled and event.reason is CancelReason.SELF_TRADE_PREVENTED:
                prevented += 1
            elif type(event) is OrderRejected:
                raise AssertionError(f"the bench stream has no rejections: {event}")
    engine.check_consistency()
    if prevented != stream.prevented:
        raise AssertionError(f"self-trade prevention stopped {prevented} orders, the floor {stream.prevented}")
    return Outcome(0.0, fills, volume, len(commands))


def run_floor(stream: Stream) -> Callable[[], Outcome]:
    ops = stream.ops

    def once() -> Outcome:
        book = FloorBook()
        limit, cancel = book.limit, book.cancel
        start = time.perf_counter()
        for oid, is_buy, price, size, account in ops:
            if is_buy is None:
                cancel(oid)
            else:
                limit(oid, is_buy, price, size, account)
        seconds = time.perf_counter() - start
        return Outcome(seconds, book.fills, book.volume, len(ops))

    return once


def run_liquibook(stream: Stream) -> Callable[[], Outcome]:
    import liquibook  # noqa: PLC0415 - optional peer

    class Fills(liquibook.OrderListener):
        def __init__(self) -> None:
            liquibook.OrderListener.__init__(self)
            self.fills = 0
            self.volume = 0

        def on_fill(self, passive: object, aggressive: object, fill_qty: int, fill_cost: int) -> None:
            self.fills += 1
            self.volume += fill_qty

        # the C++ listener's other callbacks are pure virtual: the director needs them all
        def on_accept(self, order: object) -> None:
            pass

        def on_reject(self, order: object, reason: str) -> None:
            pass

        def on_cancel(self, order: object) -> None:
            pass

        def on_cancel_reject(self, order: object, reason: str) -> None:
            pass

        def on_replace(self, order: object, size_delta: int, new_price: int) -> None:
            pass

        def on_replace_reject(self, order: object, reason: str) -> None:
            pass

        def on_trigger_stop(self, order: object) -> None:
            pass

    ops = stream.peer_ops

    def once() -> Outcome:
        orders = {oid: liquibook.SimpleOrder(is_buy, price, size) for oid, is_buy, price, size in ops if size}
        plan = [(is_buy is None, orders[oid]) for oid, is_buy, _, _ in ops]
        listener = Fills()
        book = liquibook.DepthOrderBook()
        book.set_order_listener(listener)
        book.set_symbol(MARKET)
        add, cancel = book.add, book.cancel
        start = time.perf_counter()
        for is_cancel, order in plan:
            if is_cancel:
                cancel(order)
            else:
                add(order)
        seconds = time.perf_counter() - start
        outcome = Outcome(seconds, listener.fills, listener.volume, len(ops))
        del book, orders, plan  # the book refers to the orders: free it first
        return outcome

    return once


def run_lightmatchingengine(stream: Stream) -> Callable[[], Outcome]:
    from lightmatchingengine.lightmatchingengine import LightMatchingEngine  # noqa: PLC0415 - optional peer
    from lightmatchingengine.lightmatchingengine import Side as LmeSide  # noqa: PLC0415

    # it numbers orders itself, 1, 2, ... per add_order: translate our ids up front
    lme_id: dict[int, int] = {}
    plan: list[tuple[int, int, int, int]] = []  # (lme id to cancel or 0, side, price, size)
    for oid, is_buy, price, size in stream.peer_ops:
        if is_buy is None:
            plan.append((lme_id[oid], 0, 0, 0))
        else:
            lme_id[oid] = len(lme_id) + 1
            plan.append((0, LmeSide.BUY if is_buy else LmeSide.SELL, price, size))

    def once() -> Outcome:
        engine = LightMatchingEngine()
        add, cancel = engine.add_order, engine.cancel_order
        fills = volume = 0
        start = time.perf_counter()
        for cancel_id, side, price, size in plan:
            if cancel_id:
                cancel(cancel_id, MARKET)
            else:
                order, trades = add(MARKET, price, size, side)
                for trade in trades:  # its trade list has the taker's aggregate per level, then each maker
                    if trade.order_id != order.order_id:
                        fills += 1
                        volume += trade.trade_qty
        seconds = time.perf_counter() - start
        return Outcome(seconds, fills, volume, len(plan))

    return once


CONTENDERS: dict[str, Callable[[Stream], Callable[[], Outcome]]] = {
    "engine": run_engine,
    "floor": run_floor,
    "liquibook": run_liquibook,
    "lightmatchingengine": run_lightmatchingengine,
}


# ---------------------------------------------------------------------------------------------- driver


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _best_of(once: Callable[[], Outcome], repeat: int) -> Outcome:
    once()  # warm-up
    best: Outcome | None = None
    for _ in range(repeat):
        gc.collect()
        outcome = once()
        if best is None or outcome.seconds < best.seconds:
            best = outcome
    assert best is not None
    return best


def engine_cpu_us_per_op(ops_count: int = 200_000, repeat: int = 3, seed: int = SEED) -> float:
    """The engine's CPU time per operation (microseconds, the best of `repeat` runs after a warm-up) on the
    stream `run` uses: the unit of the cluster section's overhead factors. CPU time rather than the wall time of
    `run`'s figures: a busy machine makes the wall time longer, not the engine's work."""
    once = run_engine(make_stream(ops_count, seed))
    once()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        outcome = once()
        best = min(best, time.process_time() - started)
    return best * 1e6 / outcome.ops


def _entries(commands: list[Command]) -> list[types_pb2.SequencedCommand]:
    """The stream's commands as a node receives them: sequenced log entries, one millisecond apart."""
    entries = []
    for command in commands:
        if type(command) is PlaceOrder:
            logged = types_pb2.Command(
                market=command.market, account=command.account, time_ms=command.seq,
                new_order=types_pb2.NewOrderCommand(side=int(command.side), order_type=int(command.order_type),  # type: ignore[arg-type]
                                                    size=command.size, price=command.price or 0))
        else:
            assert type(command) is CancelOrder
            logged = types_pb2.Command(market=command.market, account=command.account, time_ms=command.seq,
                                       cancel_order=types_pb2.CancelOrderCommand(order_id=command.order_id))
        entries.append(types_pb2.SequencedCommand(market=command.market, seq=command.seq,
                                                  command=logged.SerializeToString()))
    return entries


def replica_cpu_us_per_entry(ops_count: int = 200_000, repeat: int = 3, seed: int = SEED) -> float:
    """A node's replica (exchange/node/replica.py: the engine, and the journal, dedup window, order records and
    market data it keeps beside it) on the stream of `engine_cpu_us_per_op`, each command a sequenced entry as a
    node receives it, with the node's collector thresholds: CPU time per entry, the best of `repeat` runs. What
    every node spends on each order besides the network, on top of the engine's own time."""
    entries = _entries(_commands(make_stream(ops_count, seed).ops))
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        best = float("inf")
        for _ in range(repeat + 1):  # the first is a warm-up
            replica = Replica([MarketConfig(MARKET)])
            offer = replica.offer
            gc.collect()
            started = time.process_time()
            for entry in entries:
                offer(entry)
            best = min(best, time.process_time() - started)
    finally:
        gc.set_threshold(*thresholds)
    return best * 1e6 / len(entries)


def run(ops_count: int = 200_000, repeat: int = 3, seed: int = SEED) -> dict:
    """Run every contender on one stream; return a JSON-able dict of results (see ``table``)."""
    _log(f"engine bench: generating {ops_count} operations (seed {seed})")
    stream = make_stream(ops_count, seed)
    _log(
        f"engine bench: {stream.passive} passive, {stream.aggressive} aggressive ({stream.prevented} stopped by "
        f"self-trade prevention), {stream.cancels} cancels; {stream.resting_at_end} orders resting at the end on "
        f"{stream.levels_at_end} bid/ask levels"
    )
    results: dict[str, dict[str, Any]] = {}
    reference: Outcome | None = None
    for name, make in CONTENDERS.items():
        _log(f"engine bench: {name} ...")
        try:
            once = make(stream)
            if name == "engine":
                reference = engine_reference(stream)
            outcome = _best_of(once, repeat)
        except ImportError as exc:
            results[name] = {"status": f"skipped (not installed: {exc.name or exc})"}
            _log(f"engine bench: {name} skipped: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, never fatal
            results[name] = {"status": f"skipped ({type(exc).__name__}: {exc})"}
            _log(f"engine bench: {name} skipped: {exc!r}")
            continue
        if name == "engine":
            assert reference is not None
            outcome.fills, outcome.volume = reference.fills, reference.volume
        entry: dict[str, Any] = {
            "status": "ok",
            "ops_per_s": round(outcome.ops / outcome.seconds),
            "seconds": round(outcome.seconds, 4),
            "fills": outcome.fills,
            "volume": outcome.volume,
        }
        if reference is not None and (outcome.fills, outcome.volume) != (reference.fills, reference.volume):
            entry["status"] = f"volume mismatch: fills {outcome.fills}, volume {outcome.volume}"
        results[name] = entry
        _log(f"engine bench: {name}: {entry['ops_per_s']:,} ops/s ({outcome.fills} fills, {outcome.volume} lots)")

    assert reference is not None
    floor = results.get("floor", {})
    if floor.get("status") != "ok":
        raise AssertionError(f"the floor must trade exactly like the engine: {floor.get('status')}")
    for name in ("liquibook", "lightmatchingengine"):
        entry = results[name]
        if "volume" in entry and entry["volume"] <= 0:
            raise AssertionError(f"{name} traded nothing: it was not driven correctly")

    def ratio(name: str, base: str) -> float | None:
        a, b = results.get(name, {}), results.get(base, {})
        if "ops_per_s" not in a or "ops_per_s" not in b:
            return None
        return round(a["ops_per_s"] / b["ops_per_s"], 3)

    for name, entry in results.items():
        entry["vs_floor"] = ratio(name, "floor")
        entry["vs_liquibook"] = ratio(name, "liquibook")
    return {
        "ops": ops_count,
        "seed": seed,
        "repeat": repeat,
        "stream": {
            "passive": stream.passive,
            "aggressive": stream.aggressive,
            "cancels": stream.cancels,
            "self_trade_prevented": stream.prevented,
            "fills": reference.fills,
            "volume": reference.volume,
            "resting_at_end": stream.resting_at_end,
        },
        "implementations": results,
    }


def table(result: dict) -> str:
    """The results as a fixed-width text table: each implementation's rate and its ratios to the floor and
    to liquibook (figures for comparison; the engine has no target against either)."""
    lines = [
        f"engine benchmark: {result['ops']:,} operations, best of {result['repeat']} "
        f"({result['stream']['fills']:,} fills, {result['stream']['volume']:,} lots traded, "
        f"{result['stream']['self_trade_prevented']:,} orders stopped by self-trade prevention)",
        f"{'implementation':<22}{'ops/s':>12}{'vs floor':>10}{'vs liquibook':>14}  status",
    ]
    for name, entry in result["implementations"].items():
        if "ops_per_s" not in entry:
            lines.append(f"{name:<22}{'-':>12}{'-':>10}{'-':>14}  {entry['status']}")
            continue
        vs_floor = "-" if entry["vs_floor"] is None else f"{entry['vs_floor']:.2f}x"
        vs_lb = "-" if entry["vs_liquibook"] is None else f"{entry['vs_liquibook']:.2f}x"
        lines.append(f"{name:<22}{entry['ops_per_s']:>12,}{vs_floor:>10}{vs_lb:>14}  {entry['status']}")
    return "\n".join(lines)
