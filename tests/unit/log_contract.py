"""The log's contract (sequencer/log.py), one suite for every backend: `LogContract`'s tests run against each
subclass's `harness` (tests/unit/test_log_contract.py: the embedded SQLite log; tests/integration/
test_replicated_log.py: the log replicated in a real Consul).

A harness starts a Sequencer (the gate over its backend) in-process and can hold the backend's durable commit
open, so "no answer before its entry is durable" and "ReadLog never serves past the durable position" are
checked deterministically rather than by killing a process at a lucky moment. Failures are assertions: a write
that fails for good is recorded (SequencerService's on_write_failure), never a process exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest

from exchange.entry_signing import entry_is_authentic
from exchange.errors import Unavailable
from exchange.shared.markets import MarketConfig
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer.service import SequencerService
from tests.unit.fakes import run_scenario

SECRET = b"contract-secret"
MARKETS = [MarketConfig("M", tick_size=5, lot_size=1, max_size=1_000)]


class Harness(Protocol):
    failures: list[BaseException]  # writes that failed for good (on_write_failure)

    async def start(self, window: int = 1_000) -> SequencerService:
        """A Sequencer over the backend's storage (what an earlier one left), leading."""
        ...

    def hold(self) -> None:
        """From now on the backend's durable commits wait (nothing more becomes durable) until `release`."""
        ...

    def release(self) -> None: ...

    def break_writes(self) -> None:
        """From now on the backend's durable commits fail for good."""
        ...

    async def crash(self, service: SequencerService) -> None:
        """The process dies: what is held never becomes durable; nothing is flushed or released."""
        ...

    async def stop(self, service: SequencerService) -> None:
        """A clean stop."""
        ...


def order(client_order_id: str = "", node: str = "a", ref: int = 0) -> types_pb2.Command:
    return types_pb2.Command(
        market="M", client_order_id=client_order_id, origin_node=node, origin_ref=ref,
        new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=5),
    )


async def ask(service: SequencerService, applied: int, *commands: types_pb2.Command,
              node: str = "a") -> sequencer_pb2.SequenceResponse:
    request = sequencer_pb2.SequenceRequest(market="M", applied_seq=applied, node_id=node, commands=commands)
    return await service._sequence(request)


async def read_all(service: SequencerService) -> list[types_pb2.SequencedCommand]:
    request = sequencer_pb2.ReadLogRequest(market="M", from_seq=1)
    return [entry async for batch in service.ReadLog(request, None) for entry in batch.entries]


async def position(service: SequencerService) -> int:
    answer = await service.GetSequence(sequencer_pb2.GetSequenceRequest(market="M"), None)
    return answer.current_seq


def seqs(answer: sequencer_pb2.SequenceResponse) -> list[tuple[int, bool]]:
    return [(a.seq, a.duplicate) for a in answer.assignments]


class LogContract:
    """What every log backend promises (sequencer/log.py). Subclasses provide the `harness` fixture."""

    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        run_scenario(scenario(), timeout_s=60)

    def test_numbers_are_gap_free_signed_and_continue_after_a_restart(self, harness: Harness) -> None:
        async def scenario() -> None:
            service = await harness.start()
            assert seqs(await ask(service, 0, order(), order())) == [(1, False), (2, False)]
            await harness.stop(service)
            service = await harness.start()
            assert await position(service) == 2
            answer = await ask(service, 2, order())
            assert seqs(answer) == [(3, False)] and answer.current_seq == 3
            entries = await read_all(service)
            assert [e.seq for e in entries] == [1, 2, 3]
            assert all(entry_is_authentic(SECRET, e) for e in entries)
            await harness.stop(service)

        self.run(scenario)
        assert not harness.failures

    def test_no_answer_before_its_entry_is_durable_and_reads_never_pass_the_durable_end(
        self, harness: Harness
    ) -> None:
        async def scenario() -> None:
            service = await harness.start()
            await ask(service, 0, order(ref=1))
            harness.hold()
            current = asyncio.create_task(ask(service, 1, order(ref=2)))
            behind = asyncio.create_task(ask(service, 0, order(node="b", ref=1), node="b"))  # granted after 1, 2
            stale = asyncio.create_task(ask(service, 0, order(ref=1)))  # repeats entry 1: a stale answer
            await asyncio.sleep(0.5)
            assert not current.done() and not behind.done() and not stale.done(), \
                "an answer mentioned a number whose entry is not durable"
            assert service.markets["M"].current == 3, "both requests were numbered"
            assert [e.seq for e in await read_all(service)] == [1], "ReadLog served past the durable end"
            assert await position(service) == 1, "GetSequence reported a number that is not durable"
            harness.release()
            assert seqs(await current) == [(2, False)]
            granted = await behind
            assert [e.seq for e in granted.missing] == [1, 2] and seqs(granted) == [(3, False)]
            assert not (await stale).granted
            assert [e.seq for e in await read_all(service)] == [1, 2, 3]
            assert await position(service) == 3
            await harness.stop(service)

        self.run(scenario)
        assert not harness.failures

    def test_a_crash_with_a_write_held_open_restarts_at_the_last_durable_number(self, harness: Harness) -> None:
        async def scenario() -> None:
            service = await harness.start()
            await ask(service, 0, order(ref=1))
            harness.hold()
            unanswered = asyncio.create_task(ask(service, 1, order("lost", ref=2)))
            await asyncio.sleep(0.3)
            assert not unanswered.done()
            await harness.crash(service)
            unanswered.cancel()
            service = await harness.start()
            assert await position(service) == 1
            assert [e.seq for e in await read_all(service)] == [1]
            # number 2 was never stored nor answered: the next command gets it, and "lost" is not a duplicate
            assert seqs(await ask(service, 1, order("lost", ref=3))) == [(2, False)]
            await harness.stop(service)

        self.run(scenario)
        assert not harness.failures

    def test_a_client_order_id_is_deduplicated_within_the_window_and_the_window_survives_a_restart(
        self, harness: Harness
    ) -> None:
        async def scenario() -> None:
            service = await harness.start(window=3)
            assert seqs(await ask(service, 0, order("k"), order("k"))) == [(1, False), (1, True)]
            assert seqs(await ask(service, 1, order(), order())) == [(2, False), (3, False)]
            assert seqs(await ask(service, 3, order("k"))) == [(1, True)], "within the last 3 entries"
            assert seqs(await ask(service, 3, order())) == [(4, False)]
            assert seqs(await ask(service, 4, order("k"))) == [(5, False)], "out of the window: placed again"
            assert seqs(await ask(service, 5, order("j"))) == [(6, False)]
            await harness.stop(service)
            service = await harness.start(window=3)
            assert seqs(await ask(service, 6, order("k"), order("j"))) == [(5, True), (6, True)]
            assert seqs(await ask(service, 6, order(), order())) == [(7, False), (8, False)]
            assert seqs(await ask(service, 8, order("k"))) == [(9, False)]
            await harness.stop(service)

        self.run(scenario)
        assert not harness.failures

    def test_a_failed_write_fails_loudly_and_never_leaves_a_hole(self, harness: Harness) -> None:
        async def scenario() -> None:
            service = await harness.start()
            await ask(service, 0, order(ref=1))
            harness.break_writes()
            with pytest.raises(Exception) as failed:  # noqa: B017 - whatever the backend's error
                await ask(service, 1, order(ref=2))
            assert not isinstance(failed.value, Unavailable), "a failed write is not a lost leadership"
            assert harness.failures, "the failure was not reported (a service stops the process)"
            assert await position(service) == 1 and [e.seq for e in await read_all(service)] == [1]
            await harness.crash(service)  # what a service does on a failed write
            service = await harness.start()
            assert seqs(await ask(service, 1, order(ref=3))) == [(2, False)]
            assert [e.seq for e in await read_all(service)] == [1, 2]
            await harness.stop(service)

        self.run(scenario)
        assert len(harness.failures) == 1
