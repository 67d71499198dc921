"""The Sequencer's time (Command.time_ms): stamped by the gate from its injected clock, never decreasing within a
market, not within a run, not across a restart with the clock set back, not when a replica that adopted another
leader's entries leads with a clock that is behind. No network."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from exchange.entry_signing import entry_is_authentic, entry_mac
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer.log import StoredEntry
from sequencer.service import SequencerService
from sequencer.store import LogStore
from tests.unit.fakes import run_scenario
from tests.unit.test_sequencer import MARKETS, SECRET, ask, order


class Clock:
    """A wall clock the test sets."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


T = TypeVar("T")


def times(response: sequencer_pb2.SequenceResponse) -> list[int]:
    return [types_pb2.Command.FromString(a.entry.command).time_ms for a in response.assignments]


def run(path: Path, clock: Clock, scenario: Callable[[SequencerService], Awaitable[T]]) -> T:
    failures: list[BaseException] = []

    async def main() -> T:
        store = LogStore(path)
        store.start(asyncio.get_running_loop())
        try:
            return await scenario(SequencerService(store, SECRET, MARKETS, failures.append, clock=clock))
        finally:
            store.close()

    result = run_scenario(main())
    assert not failures
    return result


def test_each_command_is_stamped_with_the_clock_and_the_stamp_is_signed(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000_000)

    async def scenario(service: SequencerService) -> None:
        first = await ask(service, "a", 0, order(), order())
        assert times(first) == [1_700_000_000_000] * 2
        assert all(entry_is_authentic(SECRET, a.entry) for a in first.assignments)
        clock.now += 7
        assert times(await ask(service, "a", 2, order())) == [1_700_000_000_007]
        forged = types_pb2.Command.FromString(first.assignments[0].entry.command)
        forged.time_ms += 1
        entry = types_pb2.SequencedCommand(market="M", seq=1, command=forged.SerializeToString(),
                                           mac=first.assignments[0].entry.mac)
        assert not entry_is_authentic(SECRET, entry), "the MAC covers the time"

    run(tmp_path / "log.db", clock, scenario)


def test_a_caller_cannot_choose_the_time(tmp_path: Path) -> None:
    command = order()
    command.time_ms = 42

    async def scenario(service: SequencerService) -> None:
        assert times(await ask(service, "a", 0, command)) == [1_000]

    run(tmp_path / "log.db", Clock(1_000), scenario)


def test_time_never_decreases_when_the_clock_goes_back_within_a_run(tmp_path: Path) -> None:
    clock = Clock(5_000)

    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, order())
        clock.now = 4_000
        assert times(await ask(service, "a", 1, order())) == [5_000]
        clock.now = 6_000
        assert times(await ask(service, "a", 2, order())) == [6_000]

    run(tmp_path / "log.db", clock, scenario)


def test_a_restarted_sequencer_with_its_clock_set_back_resumes_from_the_last_stamped_time(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def before(service: SequencerService) -> None:
        await ask(service, "a", 0, order(), order())

    async def after(service: SequencerService) -> list[int]:
        applied = service.markets["M"].current
        return times(await ask(service, "a", applied, order()))

    run(path, Clock(9_000_000), before)
    assert run(path, Clock(1_000), after) == [9_000_000], "the clock went back; the log's time did not"
    assert run(path, Clock(1_000), after) == [9_000_000]
    assert run(path, Clock(9_500_000), after) == [9_500_000], "time moves on once the clock passes it"


def test_a_log_written_before_time_was_stamped_still_loads_and_is_stamped_from_then_on(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    old = order().SerializeToString()  # no time_ms: an older demo's log
    store = LogStore(path)
    store.write([StoredEntry("M", 1, None, old, entry_mac(SECRET, "M", 1, old))])
    store.close()

    async def scenario(service: SequencerService) -> list[int]:
        return times(await ask(service, "a", 1, order()))

    assert run(path, Clock(123), scenario) == [123]


def test_a_new_leader_whose_clock_is_behind_stamps_the_last_time_it_adopted(tmp_path: Path) -> None:
    """The gate's side of an HA failover: a standby adopts the leader's entries (stamped by the leader's clock),
    then leads with its own clock behind: it stamps the adopted time, not its own."""
    ahead = 2_000_000
    command = order()
    command.time_ms = ahead
    data = command.SerializeToString(deterministic=True)
    adopted = [StoredEntry("M", 1, None, data, entry_mac(SECRET, "M", 1, data))]

    async def scenario(service: SequencerService) -> list[int]:
        service.pause("a standby in this test")
        service.adopt("M", adopted)
        service.lead()
        return times(await ask(service, "b", 1, order()))

    assert run(tmp_path / "log.db", Clock(1_000_000), scenario) == [ahead]
