"""Shared fixtures of the engine unit tests: a seeded random command stream; and a note in the summary of a run
that tried the log contract on the embedded log only (the unit suite alone): its HA half needs Consul."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from exchange.engine import AmendOrder, CancelOrder, Command, OrderType, PlaceOrder, SelfTradePrevention, Side

StreamFactory = Callable[..., list[Command]]
COLLECTED = pytest.StashKey[list[str]]()
HA_LOG_TESTS = "tests/integration/test_replicated_log.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[COLLECTED] = [item.nodeid for item in items]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    collected = config.stash.get(COLLECTED, [])
    if any("test_log_contract.py" in nodeid for nodeid in collected) and not any(
            nodeid.startswith(HA_LOG_TESTS) for nodeid in collected):
        terminalreporter.write_line(
            f"note: the log's contract ran against the embedded log only; the replicated (HA) log's tests are "
            f"{HA_LOG_TESTS} and need a real Consul: `make consul` (or `bash scripts/ensure-consul.sh`), then "
            f"`.venv/bin/python -m pytest {HA_LOG_TESTS}`")

# a few accounts, and "" (no account: never self-trade prevented)
ACCOUNTS = ("", "alice", "bob", "carol")


def random_stream(seed: int, count: int, market: str = "X", mid: int = 100, spread: int = 8) -> list[Command]:
    """``count`` commands of every kind over a small price range around a drifting mid, so orders cross.

    Every order belongs to one of ``ACCOUNTS`` and has a random self-trade prevention mode, so orders meet
    orders of their own account often, under every mode. Cancels and amends pick ids the generator believes
    may still rest (it cannot know about fills, so some hit finished orders and are rejected, which is part
    of the test), mostly from the order's owner and sometimes from another account (NOT_ORDER_OWNER); ~2% of
    commands are invalid on purpose. The live book stays small (tens to a few hundred orders), which keeps
    the naive reference model fast.
    """
    rng = random.Random(seed)
    maybe_live: list[int] = []
    owner: dict[int, str] = {}

    def acting_for(order_id: int) -> str:
        return owner[order_id] if rng.random() < 0.9 else rng.choice(ACCOUNTS)

    commands: list[Command] = []
    for seq in range(1, count + 1):
        if rng.random() < 0.01:
            mid = min(max(mid + rng.choice((-1, 1)), spread + 2), 10_000)
        roll = rng.random()
        if roll < 0.30 and maybe_live:
            index = rng.randrange(len(maybe_live))
            maybe_live[index] = maybe_live[-1]
            target = maybe_live.pop()
            commands.append(CancelOrder(market, seq, target, acting_for(target)))
            continue
        if roll < 0.38 and maybe_live:
            previous = commands[-1]
            if isinstance(previous, AmendOrder) and rng.random() < 0.2:  # repeated: usually AMEND_NO_CHANGE
                commands.append(
                    AmendOrder(market, seq, previous.order_id, previous.new_size, previous.new_price, previous.account)
                )
                continue
            target = maybe_live[rng.randrange(len(maybe_live))]
            new_price = None if rng.random() < 0.5 else mid + rng.randint(-spread, spread)
            new_size = rng.randint(0, 12) if rng.random() < 0.05 else rng.randint(1, 12)
            commands.append(AmendOrder(market, seq, target, new_size, new_price, acting_for(target)))
            continue
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        kind = rng.random()
        if kind < 0.70:
            order_type = OrderType.LIMIT
        elif kind < 0.78:
            order_type = OrderType.POST_ONLY
        elif kind < 0.86:
            order_type = OrderType.IOC
        elif kind < 0.93:
            order_type = OrderType.FOK
        else:
            order_type = OrderType.MARKET
        size = rng.randint(1, 12)
        offset = rng.randint(-spread, spread)
        # passive on average: buys below the mid, sells above, with enough overlap to trade often
        level = mid - offset if side is Side.BUY else mid + offset
        level = level - 2 if side is Side.BUY else level + 2
        price = None if order_type is OrderType.MARKET else level
        account = rng.choice(ACCOUNTS)
        stp: SelfTradePrevention | int = rng.choice(list(SelfTradePrevention))
        if rng.random() < 0.02:  # invalid on purpose
            size, price, stp = rng.choice([(0, price, stp), (size, None, stp), (size, 0, stp), (-size, price, stp),
                                           (size, price, 0), (size, price, 5)])
        commands.append(PlaceOrder(market, seq, side, order_type, size, price, account,
                                    stp))  # type: ignore[arg-type]  # an int (0 or 5) on purpose: the engine refuses it
        if order_type in (OrderType.LIMIT, OrderType.POST_ONLY):
            maybe_live.append(seq)
            owner[seq] = account
    return commands


@pytest.fixture
def make_stream() -> StreamFactory:
    return random_stream
