"""The Sequencer's gate and durable log, driven in-process (no network)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.entry_signing import entry_is_authentic
from exchange.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from exchange.shared.markets import MarketConfig
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer import gate as gate_module
from sequencer.log import LeadershipLost, Recovered, StoredEntry
from sequencer.service import SequencerService
from sequencer.store import LogStore
from tests.unit.fakes import Aborted, FakeContext, run_scenario, until

SECRET = b"s"
MARKETS = [MarketConfig("M", tick_size=5, lot_size=1, max_size=1_000)]


def order(client_order_id: str = "") -> types_pb2.Command:
    return types_pb2.Command(
        market="M", client_order_id=client_order_id,
        new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=5),
    )


async def ask(service: SequencerService, node: str, applied: int,
              *commands: types_pb2.Command) -> sequencer_pb2.SequenceResponse:
    request = sequencer_pb2.SequenceRequest(market="M", applied_seq=applied, node_id=node, commands=commands)
    return await service._sequence(request)


T = TypeVar("T")


def run_with_service(path: Path, scenario: Callable[[SequencerService], Awaitable[T]]) -> T:
    """Runs `scenario(service)`; a failed log write fails the test (a real Sequencer would exit)."""
    write_failures: list[BaseException] = []

    async def main() -> T:
        store = LogStore(path)
        store.start(asyncio.get_running_loop())
        try:
            return await scenario(SequencerService(store, SECRET, MARKETS, write_failures.append))
        finally:
            store.close()

    result = run_scenario(main())
    assert not write_failures, f"the log write failed: {write_failures}"
    return result


def from_node(node: str, ref: int, client_order_id: str = "") -> types_pb2.Command:
    command = order(client_order_id)
    command.origin_node, command.origin_ref = node, ref
    return command


def test_grant_numbers_commands_in_order_and_signs_them(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        granted = await ask(service, "a", 0, order(), order())
        assert granted.granted and [a.seq for a in granted.assignments] == [1, 2]
        assert all(entry_is_authentic(SECRET, a.entry) for a in granted.assignments)
        assert not granted.missing and granted.current_seq == 2

    run_with_service(tmp_path / "log.db", scenario)


def test_a_node_behind_is_granted_with_what_it_lacks_first(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, from_node("a", 1), from_node("a", 2))
        behind = await ask(service, "b", 0, from_node("b", 1))
        assert behind.granted, "no wasted round trip: the node gets what it lacks and its grant at once"
        assert [e.seq for e in behind.missing] == [1, 2]
        assert [a.seq for a in behind.assignments] == [3] and behind.current_seq == 3
        assert all(entry_is_authentic(SECRET, e) for e in behind.missing)
        current = await ask(service, "a", 2, from_node("a", 3))
        assert current.granted and [e.seq for e in current.missing] == [3] and current.assignments[0].seq == 4

    run_with_service(tmp_path / "log.db", scenario)


def test_a_repeated_request_is_stale_and_carries_its_numbered_commands_not_numbered_again(tmp_path: Path) -> None:
    """The answer to the first request was lost: the node's retry states the same applied sequence."""

    async def scenario(service: SequencerService) -> None:
        first = await ask(service, "a", 0, from_node("a", 7), from_node("a", 8))
        await ask(service, "b", 2, from_node("b", 1))
        retry = await ask(service, "a", 0, from_node("a", 7), from_node("a", 8))
        assert not retry.granted and not retry.assignments
        assert [e.seq for e in retry.missing] == [1, 2, 3] and retry.current_seq == 3
        assert [e.command for e in retry.missing[:2]] == [a.entry.command for a in first.assignments]
        partly = await ask(service, "a", 0, from_node("a", 8), from_node("a", 9))  # one numbered, one new
        assert not partly.granted and partly.current_seq == 3, "nothing of a repeating request is numbered"

    run_with_service(tmp_path / "log.db", scenario)


NODE_NAMES = st.sampled_from(["", "a", "ab", "node-1", "node-10", "nœud-1", "M"])
COMMANDS = st.builds(
    lambda node, ref, coid: types_pb2.Command(market="M", origin_node=node, origin_ref=ref, client_order_id=coid),
    NODE_NAMES, st.integers(0, 3), st.one_of(st.just(""), NODE_NAMES),
)


@settings(max_examples=300, deadline=None)
@given(request=st.lists(COMMANDS, min_size=1, max_size=3), stored=st.lists(COMMANDS, max_size=6))
def test_the_repeat_check_finds_a_repeat_exactly_when_parsing_every_missing_entry_does(
    request: list[types_pb2.Command], stored: list[types_pb2.Command],
) -> None:
    """The check skips parsing an entry whose bytes hold none of the request's node names: names that contain
    one another, non-ASCII names, and names repeated in other fields must not change its answer."""
    entries = [StoredEntry("M", seq, None, command.SerializeToString(), b"")
               for seq, command in enumerate(stored, start=1)]
    refs = {(command.origin_node, command.origin_ref) for command in request}
    by_parsing_all = any(ref == 0 for _, ref in refs) or any(
        (command.origin_node, command.origin_ref) in refs for command in stored)
    asked = sequencer_pb2.SequenceRequest(market="M", commands=request)
    assert gate_module._may_repeat_numbered_commands(asked, entries) is by_parsing_all


def test_a_node_further_behind_than_one_answer_is_stale_then_granted_after_catching_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate_module, "MAX_MISSING_PER_ANSWER", 3)

    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, *(from_node("a", ref) for ref in range(1, 6)))
        far = await ask(service, "b", 0, from_node("b", 1))
        assert not far.granted and [e.seq for e in far.missing] == [1, 2, 3] and far.current_seq == 5
        near = await ask(service, "b", 3, from_node("b", 1))  # after applying those (and reading the log)
        assert near.granted and [e.seq for e in near.missing] == [4, 5] and near.assignments[0].seq == 6

    run_with_service(tmp_path / "log.db", scenario)


def test_a_node_ahead_of_the_log_is_refused_and_nothing_is_numbered(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, order())
        with pytest.raises(FailedPrecondition, match="not from this log"):
            await service._sequence(sequencer_pb2.SequenceRequest(
                market="M", applied_seq=5, node_id="x", commands=[order()]))
        assert service.markets["M"].current == 1

    run_with_service(tmp_path / "log.db", scenario)


@pytest.mark.parametrize("entries", [0, 3])
def test_a_negative_applied_seq_is_refused_and_nothing_is_numbered(tmp_path: Path, entries: int) -> None:
    async def scenario(service: SequencerService) -> None:
        if entries:
            await ask(service, "a", 0, *[order() for _ in range(entries)])
        with pytest.raises(InvalidArgument, match="negative"):  # was: an endless loop on an empty log
            await asyncio.wait_for(ask(service, "a", -1, order()), 5)
        assert service.markets["M"].current == entries

    run_with_service(tmp_path / "log.db", scenario)


def test_a_failed_log_write_is_reported_and_its_numbers_are_never_answered(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    async def scenario() -> None:
        store = LogStore(tmp_path / "log.db")
        store.start(asyncio.get_running_loop())
        service = SequencerService(store, SECRET, MARKETS, failures.append)
        await ask(service, "a", 0, order())
        store._writer.close()  # the disk goes away
        with pytest.raises(sqlite3.ProgrammingError):
            await ask(service, "a", 1, order())
        assert service.markets["M"].durable == 1

    run_scenario(scenario())
    assert len(failures) == 1 and isinstance(failures[0], sqlite3.ProgrammingError)


def test_restart_resumes_at_the_last_number_and_remembers_client_order_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def before(service: SequencerService) -> None:
        answer = await ask(service, "a", 0, order("x"), order(), order("y"))
        assert [a.seq for a in answer.assignments] == [1, 2, 3]

    async def after(service: SequencerService) -> None:
        answer = await ask(service, "a", 3, order("y"), order())
        assert [(a.seq, a.duplicate) for a in answer.assignments] == [(3, True), (4, False)]
        earlier = types_pb2.Command.FromString(answer.assignments[0].entry.command)
        earlier.ClearField("time_ms")  # stamped by the Sequencer
        assert earlier == order("y")
        entries = [e async for batch in service.ReadLog(
            sequencer_pb2.ReadLogRequest(market="M", from_seq=2), None) for e in batch.entries]
        assert [e.seq for e in entries] == [2, 3, 4]

    run_with_service(path, before)
    run_with_service(path, after)


def test_a_client_order_id_is_numbered_once_in_a_request_across_requests_and_across_nodes(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        first = await ask(service, "a", 0, order("k"), order("k"), order())
        assert [(a.seq, a.duplicate) for a in first.assignments] == [(1, False), (1, True), (2, False)]
        again = await ask(service, "b", 2, order("k"))
        assert [(a.seq, a.duplicate) for a in again.assignments] == [(1, True)]
        assert again.current_seq == 2, "a duplicate uses no number"
        entries = [e async for batch in service.ReadLog(
            sequencer_pb2.ReadLogRequest(market="M", from_seq=1), None) for e in batch.entries]
        assert [types_pb2.Command.FromString(e.command).client_order_id for e in entries] == ["k", ""]

    run_with_service(tmp_path / "log.db", scenario)


def test_commands_without_an_origin_reference_are_granted_only_to_a_current_node(tmp_path: Path) -> None:
    """A tool's command carries no (origin node, reference), so a repeat of it could not be recognised:
    such a request is granted only when it states the current sequence (compare-and-set)."""

    async def scenario(service: SequencerService) -> None:
        assert (await ask(service, "tool", 0, order())).granted
        behind = await ask(service, "tool", 0, order())
        assert not behind.granted and [e.seq for e in behind.missing] == [1]
        assert (await ask(service, "tool", 1, order())).granted

    run_with_service(tmp_path / "log.db", scenario)


def test_a_market_the_cluster_does_not_trade_is_not_found_and_never_opened(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        evil = types_pb2.Command(market="EVIL-12811", new_order=order().new_order)
        with pytest.raises(NotFound, match="unknown market 'EVIL-12811'; this cluster trades: M"):
            await service._sequence(sequencer_pb2.SequenceRequest(
                market="EVIL-12811", applied_seq=0, node_id="x", commands=[evil]))
        with pytest.raises(Aborted) as refused:
            await service.GetSequence(sequencer_pb2.GetSequenceRequest(market="EVIL-12811"), FakeContext())
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        assert list(service.markets) == ["M"]

    run_with_service(tmp_path / "log.db", scenario)


def test_get_sequence_of_an_empty_market_is_the_default_markets(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, order(), order())
        answer = await service.GetSequence(sequencer_pb2.GetSequenceRequest(market=""), FakeContext())
        assert (answer.market, answer.current_seq) == ("M", 2)

    run_with_service(tmp_path / "log.db", scenario)


@pytest.mark.parametrize(("command", "names"), [
    (types_pb2.Command(market="M"), "has no new_order"),
    (types_pb2.Command(market="OTHER", new_order=order().new_order), "is for market 'OTHER'"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=-(2**63), price=-5)), "SIZE_OUT_OF_BOUNDS"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=6, price=-5)), "PRICE_OUT_OF_BOUNDS"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=6, price=7)), "PRICE_NOT_ON_TICK"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1_001, price=5)), "SIZE_OUT_OF_BOUNDS"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=9, order_type=types_pb2.LIMIT,  # type: ignore[arg-type]  # no Side, on purpose
        size=6, price=5)), "INVALID_SIDE"),
    (types_pb2.Command(market="M", new_order=types_pb2.NewOrderCommand(
        side=types_pb2.SELL, order_type=types_pb2.MARKET, size=6, price=5)), "PRICE_NOT_ALLOWED"),
    (types_pb2.Command(market="M", cancel_order=types_pb2.CancelOrderCommand(order_id=-1)), "order_id must be"),
    (types_pb2.Command(market="M", amend_order=types_pb2.AmendOrderCommand(order_id=1, new_size=0)),
     "AMEND_SIZE_INVALID"),
    (types_pb2.Command(market="M", client_order_id="x" * 65, new_order=order().new_order), "at most 64"),
])
def test_a_malformed_command_is_refused_and_nothing_of_its_request_is_numbered(
    tmp_path: Path, command: types_pb2.Command, names: str
) -> None:
    async def scenario(service: SequencerService) -> None:
        with pytest.raises(InvalidArgument, match=names):
            await ask(service, "x", 0, order(), command)
        assert service.markets["M"].current == 0

    run_with_service(tmp_path / "log.db", scenario)


class HandHeldLog:
    """A log backend whose writes finish only when the test says so (`finish`) while `holding`, and which can
    lose its leadership like the replicated log: the writes still open fail with LeadershipLost."""

    leads_at_start = True

    def __init__(self) -> None:
        self.writes: list[tuple[list[StoredEntry], asyncio.Future[None]]] = []
        self.durable: list[StoredEntry] = []
        self.holding = True

    def recover(self, market: str, window: int) -> Recovered:
        return Recovered(0, [])

    def markets(self) -> list[str]:
        return ["M"]

    def start(self, loop: asyncio.AbstractEventLoop, gate: object = None) -> None:
        pass

    def append(self, market: str, entries: list[StoredEntry]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes.append((entries, done))
        if not self.holding:
            self.finish(len(self.writes) - 1)
        return done

    def finish(self, index: int) -> None:
        entries, done = self.writes[index]
        self.durable += entries
        done.set_result(None)

    def lose_leadership(self) -> None:
        for _, done in self.writes:
            if not done.done():
                done.set_exception(LeadershipLost("another replica leads (the test)"))

    def read(self, market: str, from_seq: int, to_seq: int, limit: int) -> list[StoredEntry]:
        return [e for e in self.durable if from_seq <= e.seq <= to_seq][:limit]

    def describe(self) -> str:
        return "a log held by the test"

    def suspect(self, why: str) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_retry_after_a_step_down_took_back_numbers_is_the_duplicate_of_its_durable_first() -> None:
    """The dedup window is forgotten from the durable end, never from the numbers assigned: a step-down takes
    the numbers past the durable end back, and a key still inside the durable window must survive it (a
    window of 2: "k" at 1 is out of the window of the assigned 3, inside that of the durable 1)."""
    failures: list[BaseException] = []

    async def scenario() -> None:
        log = HandHeldLog()
        service = SequencerService(log, SECRET, MARKETS, failures.append, dedup_window=2)
        first = asyncio.create_task(ask(service, "a", 0, from_node("a", 1, "k")))
        await until(lambda: len(log.writes) == 1)
        later = asyncio.create_task(ask(service, "b", 1, from_node("b", 1), from_node("b", 2)))
        await until(lambda: len(log.writes) == 2)
        assert service.markets["M"].current == 3
        log.finish(0)  # only the first write (number 1, "k") is durable: "k" is answered
        assert [(a.seq, a.duplicate) for a in (await first).assignments] == [(1, False)]
        service.pause("the test: another replica leads")
        log.lose_leadership()
        service.step_down({"M": 1}, "the test: another replica leads")  # 2 and 3 are taken back
        with pytest.raises(Unavailable):
            await later
        service.lead()
        log.holding = False
        retry = await ask(service, "a", 1, from_node("a", 2, "k"))  # its answer was lost: the client retries
        assert [(a.seq, a.duplicate) for a in retry.assignments] == [(1, True)], \
            "the retried client_order_id was placed again"
        assert service.markets["M"].current == 1 and len(log.writes) == 2, "the duplicate took no number"

    run_scenario(scenario())
    assert not failures


def request(node: str, applied: int, *commands: types_pb2.Command) -> sequencer_pb2.SequenceRequest:
    return sequencer_pb2.SequenceRequest(market="M", applied_seq=applied, node_id=node, commands=commands)


def test_a_stream_numbers_a_pipelined_request_while_the_one_before_waits_for_its_write_and_answers_in_order() -> None:
    """A node's second request on its gate stream, sent before the first is answered (so stating the same applied
    sequence), is numbered at once, behind the first, and granted: the first's entries are what it lacks, its own
    commands are not among them. The answers keep the requests' order."""
    failures: list[BaseException] = []

    async def scenario() -> None:
        log = HandHeldLog()
        service = SequencerService(log, SECRET, MARKETS, failures.append)
        sent: asyncio.Queue[sequencer_pb2.SequenceRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[sequencer_pb2.SequenceRequest]:
            while (item := await sent.get()) is not None:
                yield item

        answers = service.SequenceStream(requests(), FakeContext())
        first = asyncio.ensure_future(anext(answers))
        sent.put_nowait(request("a", 0, from_node("a", 1)))
        sent.put_nowait(request("a", 0, from_node("a", 2), from_node("a", 3)))
        await asyncio.wait_for(until(lambda: len(log.writes) == 2), 5)  # both numbered, neither write durable
        assert not first.done() and service.markets["M"].current == 3
        log.finish(1)  # the second write is durable first: its answer still waits for the first's
        await asyncio.sleep(0.05)
        assert not first.done()
        log.finish(0)
        one = await first
        assert one.granted and not one.missing and [a.seq for a in one.assignments] == [1]
        two = await asyncio.wait_for(anext(answers), 5)
        assert two.granted, "the node's own pipelined commands must not make its next request stale"
        assert [e.seq for e in two.missing] == [1] and [a.seq for a in two.assignments] == [2, 3]
        sent.put_nowait(request("a", 0, from_node("a", 2), from_node("a", 3)))  # the second again (its answer lost)
        again = await asyncio.wait_for(anext(answers), 5)
        assert not again.granted and [e.seq for e in again.missing] == [1, 2, 3] and service.markets["M"].current == 3
        sent.put_nowait(None)
        await answers.aclose()

    run_scenario(scenario())
    assert not failures


def test_a_new_order_with_an_unknown_self_trade_prevention_never_enters_the_log(tmp_path: Path) -> None:
    """The node refuses it; the Sequencer must too, for a caller that bypasses a node (security review)."""

    async def scenario(service: SequencerService) -> None:
        command = order()
        command.new_order.self_trade_prevention = 99  # type: ignore[assignment]  # no mode, on purpose
        with pytest.raises(InvalidArgument, match="INVALID_SELF_TRADE_PREVENTION"):
            await ask(service, "a", 0, command)
        assert service.markets["M"].current == 0
        unset = order()  # unset is the default mode (CANCEL_TAKER), as the node sends it
        assert (await ask(service, "a", 0, unset)).granted

    run_with_service(tmp_path / "log.db", scenario)


def test_a_grant_never_mentions_a_number_that_a_step_down_takes_back() -> None:
    """gate.py:347 (and :416): an answer's current_seq is `market.current`, the highest number *assigned*, not
    the durable end. A's grant is answered once its own write (number 1) is durable, but it names 2 (B's
    number, still uncommitted) as the Sequencer's position; the step-down then takes 2 back, and the next
    leader gives 2 to another command. The gate's docstring: "an answer never mentions a number that a lost
    leadership took back"."""
    failures: list[BaseException] = []

    async def scenario() -> None:
        log = HandHeldLog()
        service = SequencerService(log, SECRET, MARKETS, failures.append)
        first = asyncio.create_task(ask(service, "a", 0, from_node("a", 1)))
        await until(lambda: len(log.writes) == 1)
        later = asyncio.create_task(ask(service, "b", 0, from_node("b", 1)))
        await until(lambda: len(log.writes) == 2)
        log.finish(0)  # only number 1 is durable
        answer = await first
        service.pause("the test: another replica leads")
        log.lose_leadership()
        service.step_down({"M": 1}, "the test: another replica leads")  # 2 is taken back
        with pytest.raises(Unavailable):
            await later
        assert service.markets["M"].current == 1
        assert answer.current_seq <= 1, (
            f"A's grant told the node the log reaches {answer.current_seq}; only 1 was ever durable and 2 was "
            "taken back by the step-down")

    run_scenario(scenario())
    assert not failures


def test_an_answer_names_its_own_numbers_when_the_write_was_durable_before_the_answer_looked() -> None:
    """A write that finishes at once (a fast disk, a store answering before the gate awaits it) is done before
    its callbacks ran: the answer's current_seq must still reach every number it grants (it read 0 for 1, and
    the node took its own grant for a gap; CI of 2026-12-03)."""
    failures: list[BaseException] = []

    async def scenario() -> None:
        log = HandHeldLog()
        log.holding = False  # every write is durable within append
        service = SequencerService(log, SECRET, MARKETS, failures.append)
        granted = await ask(service, "a", 0, from_node("a", 1), from_node("a", 2))
        assert granted.granted and [a.seq for a in granted.assignments] == [1, 2]
        assert granted.current_seq == 2
        repeated = await ask(service, "a", 0, from_node("a", 1))  # stale: carries 1..2, names the end
        assert not repeated.granted and repeated.current_seq == 2

    run_scenario(scenario())
    assert not failures
