"""The Sequencer's gate and durable log, driven in-process (no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from exchange.entries import entry_is_authentic
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer.service import SequencerService
from sequencer.store import LogStore

SECRET = b"s"


def order(client_order_id: str = "") -> types_pb2.Command:
    return types_pb2.Command(
        market="M", client_order_id=client_order_id,
        new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=5),
    )


def ask(service: SequencerService, node: str, applied: int, *commands: types_pb2.Command):  # type: ignore[no-untyped-def]
    request = sequencer_pb2.SequenceRequest(market="M", applied_seq=applied, node_id=node, commands=commands)
    return service.Sequence(request, None)


def run_with_service(path: Path, scenario, reservation_s: float = 0.5):  # type: ignore[no-untyped-def]
    """Runs `scenario(service)`; a failed log write fails the test (a real Sequencer would exit)."""
    write_failures: list[BaseException] = []

    async def main():  # type: ignore[no-untyped-def]
        store = LogStore(path)
        store.start(asyncio.get_running_loop())
        try:
            return await scenario(SequencerService(store, SECRET, reservation_s, write_failures.append))
        finally:
            store.close()

    result = asyncio.run(main())
    assert not write_failures, f"the log write failed: {write_failures}"
    return result


def test_grant_numbers_commands_in_order_and_signs_them(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        granted = await ask(service, "a", 0, order(), order())
        assert granted.granted and [a.seq for a in granted.assignments] == [1, 2]
        assert all(entry_is_authentic(SECRET, a.entry) for a in granted.assignments)

    run_with_service(tmp_path / "log.db", scenario)


def test_stale_node_gets_missing_entries_and_its_retry_is_reserved(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, order())
        stale = await ask(service, "b", 0, order())
        assert not stale.granted and stale.current_seq == 1
        assert [e.seq for e in stale.missing] == [1]
        # node a asks while the market is reserved for b: it must wait until b's retry is granted
        a_waiting = asyncio.ensure_future(ask(service, "a", 1, order()))
        await asyncio.sleep(0.05)
        assert not a_waiting.done()
        b_retry = await ask(service, "b", 1, order())
        assert b_retry.granted and b_retry.assignments[0].seq == 2
        a_answer = await a_waiting
        assert not a_answer.granted and [e.seq for e in a_answer.missing] == [2]

    run_with_service(tmp_path / "log.db", scenario)


def test_reservation_of_a_vanished_node_expires(tmp_path: Path) -> None:
    async def scenario(service: SequencerService) -> None:
        await ask(service, "a", 0, order())
        await ask(service, "gone", 0, order())  # stale: reserved for "gone", which never retries
        answer = await asyncio.wait_for(ask(service, "a", 1, order()), timeout=2)
        assert answer.granted and answer.assignments[0].seq == 2

    run_with_service(tmp_path / "log.db", scenario, reservation_s=0.1)


def test_restart_resumes_at_the_last_number_and_remembers_client_order_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def before(service: SequencerService) -> None:
        answer = await ask(service, "a", 0, order("x"), order(), order("y"))
        assert [a.seq for a in answer.assignments] == [1, 2, 3]

    async def after(service: SequencerService) -> None:
        answer = await ask(service, "a", 3, order("y"), order())
        assert [(a.seq, a.duplicate) for a in answer.assignments] == [(3, True), (4, False)]
        assert answer.assignments[0].entry.command == order("y").SerializeToString(deterministic=True)
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
