"""The public streams' pacing (exchange/node/pacing.py): a market's subscribers wake together, at once after a
quiet spell and then at most once per interval however many commands are applied; a stream that must end is
woken at once; a message shared by the subscribers in step is built and serialised once."""

from __future__ import annotations

import asyncio

from exchange.node.pacing import Pulse, SharedMessages
from exchange.v1 import exchange_pb2 as pb
from tests.unit.fakes import run_scenario


def test_many_changes_wake_the_waiting_subscribers_together_at_most_once_per_interval() -> None:
    async def scenario() -> None:
        pulse = Pulse(interval=1.0)  # long: the 100 notifies below take far less
        woken: list[int] = []

        async def subscriber(number: int) -> None:
            while True:
                await pulse.wait()
                woken.append(number)

        tasks = [asyncio.create_task(subscriber(n)) for n in range(3)]
        await asyncio.sleep(0)
        pulse.notify()  # after a quiet spell: at once
        await asyncio.sleep(0)
        assert sorted(woken) == [0, 1, 2]
        for _ in range(100):  # a busy market: one pulse at the end of the interval, not 100
            pulse.notify()
            await asyncio.sleep(0)
        assert len(woken) == 3, "no pulse within the interval"
        while len(woken) < 6:  # the deferred pulse (the scenario's own deadline bounds the wait)
            await asyncio.sleep(0.01)
        assert pulse._timer is None, "nothing changed since: no other pulse pending"
        pulse.notify()
        pulse.fire()  # a stream must end: at once, and the pending pulse is not needed
        await asyncio.sleep(0)
        assert len(woken) == 9 and pulse._timer is None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pulse.close()

    run_scenario(scenario())


def test_a_change_outside_the_event_loop_wakes_nobody_and_does_not_fail() -> None:
    Pulse().notify()  # a command applied before the node's loop runs (nobody can wait yet)


def test_a_wait_with_a_timeout_returns_without_a_pulse() -> None:
    async def scenario() -> None:
        pulse = Pulse(interval=0.05)
        await asyncio.wait_for(pulse.wait(0.01), 5)

    run_scenario(scenario())


def test_a_shared_message_is_built_once_per_key_and_the_oldest_are_dropped() -> None:
    built: list[int] = []

    def build(n: int) -> pb.TradeBatch:
        built.append(n)
        return pb.TradeBatch(market=f"M{n}")

    shared = SharedMessages(limit=2)
    first = shared.get(("M", 1), lambda: build(1))
    assert shared.get(("M", 1), lambda: build(1)) is first and built == [1]
    assert pb.TradeBatch.FromString(first).market == "M1"
    shared.get(("M", 2), lambda: build(2))
    shared.get(("M", 3), lambda: build(3))
    shared.get(("M", 1), lambda: build(1))  # dropped: built again
    assert built == [1, 2, 3, 1]
