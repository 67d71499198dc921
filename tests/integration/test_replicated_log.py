"""The replicated log (sequencer/replicated.py) against a real Consul dev agent, in-process: the log's contract
(the same suite as the embedded log's, tests/unit/log_contract.py), then what only a replicated log has to
show: a deposed leader's commit refused by Consul (fencing), unknown outcomes resolved exactly once, the
bounded tail in Consul and a replica joining after the tail moved on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.consul_agent import ConsulDevAgent
from discovery import DiscoveryError, TransactionOp, TransactionRejected
from discovery.consul_kv import ConsulKV
from exchange.cluster_common import SEQUENCER_LEADER_KEY, LeaderRecord
from exchange.errors import ExchangeError, Unavailable
from exchange.v1 import types_pb2
from sequencer.ha.records import HEADS_PREFIX, batch_prefix, decode_batch
from sequencer.log import StoredEntry
from sequencer.replicated import ReplicatedLog
from sequencer.service import SequencerService
from sequencer.store import LogStore
from tests.integration.conftest import consul_or_skip
from tests.unit.fakes import run_scenario
from tests.unit.log_contract import MARKETS, SECRET, LogContract, ask, order, position, read_all, seqs

pytestmark = pytest.mark.integration


class TestStore:
    """The real store (ConsulKV) whose transactions a test can hold, break, lose the answer of, or cut off."""

    __test__ = False

    def __init__(self, inner: ConsulKV) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.broken = False  # every transaction fails for good
        self.dead = False  # the process is gone: nothing reaches the store
        self.lose_answers = 0  # the next N transactions: applied, then the answer is lost
        self.lose_requests = 0  # the next N transactions: lost before they reach the store
        self.transactions = 0
        self.arrived = 0  # transactions sent, including those held by `gate`

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def transact(self, ops: Sequence[TransactionOp]) -> dict[str, int]:
        self.arrived += 1
        self.gate.wait()
        if self.dead:
            raise DiscoveryError("the process is gone")
        if self.broken:
            raise TransactionRejected("the test broke every write")
        self.transactions += 1
        if self.lose_requests:
            self.lose_requests -= 1
            raise DiscoveryError("the request was lost (the test)")
        result = self.inner.transact(ops)
        if self.lose_answers:
            self.lose_answers -= 1
            raise DiscoveryError("the answer was lost (the test)")
        return result


class Replica:
    """One Sequencer replica in-process: the gate over a ReplicatedLog on a TestStore."""

    def __init__(self, name: str, kv: ConsulKV, archive: Path, failures: list[BaseException], window: int = 1_000,
                 tail: int = 1_000, read_peer: Any = None, ttl: float = 10.0, clock: Any = None) -> None:
        self.store = TestStore(kv)
        self.log = ReplicatedLog(self.store, LogStore(archive, synchronous="NORMAL"), ["M"],
                                 LeaderRecord(name, "127.0.0.1:1"), ["serfHealth"], secret=SECRET, tail_entries=tail,
                                 lock_delay_s=0, read_peer=read_peer, session_ttl_s=ttl)
        self.service = SequencerService(self.log, SECRET, MARKETS, failures.append, dedup_window=window,
                                        **({"clock": clock} if clock is not None else {}))

    def start(self) -> None:
        self.log.start(asyncio.get_running_loop(), self.service)

    async def until(self, condition: Any, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def leading(self) -> None:
        await self.until(lambda: self.service.leading, "the replica to lead")

    def crash(self, kv: ConsulKV) -> None:
        """The process dies; Consul ends its session (its health check fails) and the lock is free."""
        self.log._stop.set()
        self.store.dead = True
        self.store.gate.set()
        if self.log.session is not None:
            kv.destroy_session(self.log.session)


@pytest.fixture
def consul(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ConsulDevAgent]:
    binary = consul_or_skip("the HA log's tests (the replicated log's contract, fencing, unknown outcomes)",
                            "`.venv/bin/python -m pytest tests/integration/test_replicated_log.py`")
    agent = ConsulDevAgent(binary, data_dir=tmp_path / "consul", log_file=tmp_path / "consul.log")
    failed_before = request.session.testsfailed
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        if request.session.testsfailed > failed_before:  # the agent's side of a failure
            print(f"---- consul log ({agent.log_file}) ----\n{agent.read_log()}")


def kv_of(agent: ConsulDevAgent) -> ConsulKV:
    host, _, port = agent.address.rpartition(":")
    return ConsulKV(host, int(port))


class ConsulHarness:
    def __init__(self, kv: ConsulKV, archive: Path) -> None:
        self.kv = kv
        self.archive = archive
        self.failures: list[BaseException] = []
        self.replica: Replica | None = None

    async def start(self, window: int = 1_000) -> SequencerService:
        self.replica = Replica(f"replica-{time.monotonic_ns()}", self.kv, self.archive, self.failures, window)
        self.replica.start()
        await self.replica.leading()
        return self.replica.service

    def hold(self) -> None:
        assert self.replica is not None
        self.replica.store.gate.clear()

    def release(self) -> None:
        assert self.replica is not None
        self.replica.store.gate.set()

    def break_writes(self) -> None:
        assert self.replica is not None
        self.replica.store.broken = True

    async def crash(self, service: SequencerService) -> None:
        assert self.replica is not None
        self.replica.crash(self.kv)

    async def stop(self, service: SequencerService) -> None:
        assert self.replica is not None
        await asyncio.to_thread(self.replica.log.close)


class TestReplicatedLog(LogContract):
    @pytest.fixture
    def harness(self, consul: ConsulDevAgent, tmp_path: Path) -> ConsulHarness:
        return ConsulHarness(kv_of(consul), tmp_path / "archive.sqlite3")


def run(scenario: Any) -> None:
    run_scenario(scenario(), timeout_s=90)


async def deposed_with_a_stalled_write(
    kv: ConsulKV, tmp_path: Path, failures: list[BaseException]
) -> tuple[Replica, asyncio.Task[Any], Replica]:
    """A leader ("old") commits number 1, then stalls with number 2 ("stalled") numbered, its transaction held
    before it reaches Consul; Consul ends its session; another replica ("new") takes over (it read the head:
    number 1). Returns old, the stalled request, new."""
    old = Replica("old", kv, tmp_path / "old.sqlite3", failures)
    old.start()
    await old.leading()
    await ask(old.service, 0, order(ref=1))
    old.store.gate.clear()  # the stall: its next transaction waits before it reaches Consul
    sent = old.store.arrived
    stalled = asyncio.create_task(ask(old.service, 1, order("stalled", ref=2)))
    await old.until(lambda: old.store.arrived > sent, "the old leader's transaction of number 2")
    assert not stalled.done() and old.service.markets["M"].current == 2
    session = old.log.session
    assert session is not None
    kv.destroy_session(session)  # what Consul does when its check fails or its TTL passes
    new = Replica("new", kv, tmp_path / "new.sqlite3", failures)
    new.start()
    await new.leading()
    return old, stalled, new


def test_a_deposed_leader_is_fenced_its_commit_refused_by_consul_and_it_follows_as_a_standby(
    consul: ConsulDevAgent, tmp_path: Path
) -> None:
    """A leader stalls with a batch numbered; Consul ends its session; another replica leads and commits the
    same number; the old leader's transaction for it is refused (check-session, and the head's compare-and-set:
    the next test has the write arrive before the new leader commits, where only check-session refuses it), it
    steps down, answers nothing of what it numbered, and adopts the new leader's entries as a standby."""
    kv = kv_of(consul)
    failures: list[BaseException] = []

    async def scenario() -> None:
        old, stalled, new = await deposed_with_a_stalled_write(kv, tmp_path, failures)
        taken = await ask(new.service, 1, order("taken", node="b", ref=1), node="b")
        assert seqs(taken) == [(2, False)], "the new leader continues at exactly the head + 1"
        old.store.gate.set()  # the old leader wakes up and sends its transaction for number 2
        with pytest.raises(ExchangeError) as refused:
            await stalled
        assert refused.value.code.name == "UNAVAILABLE", refused.value
        await old.until(lambda: not old.service.leading and old.service.markets["M"].durable == 2,
                        "the old leader to step down and adopt the new leader's entry")
        with pytest.raises(ExchangeError) as standby:
            await ask(old.service, 2, order(ref=3))
        assert standby.value.code.name == "UNAVAILABLE" and "standby" in str(standby.value)
        for replica in (old, new):
            entries = await read_all(replica.service)
            assert [e.seq for e in entries] == [1, 2]
            assert types_pb2.Command.FromString(entries[1].command).client_order_id == "taken"
        await asyncio.to_thread(old.log.close)
        await asyncio.to_thread(new.log.close)

    run(scenario)
    assert not failures


def test_a_deposed_leaders_write_that_arrives_before_the_new_leader_commits_is_refused_and_never_in_the_log(
    consul: ConsulDevAgent, tmp_path: Path
) -> None:
    """The one case only check-session stops: the old leader's transaction for number 2 reaches Consul after the
    new leader took over but before it committed anything, so the head is still the version both read and the
    compare-and-set alone would let it through. Refused, the old leader answers nothing; the new leader numbers 2
    itself and keeps leading; the log holds the new leader's entry, on every replica and in Consul."""
    kv = kv_of(consul)
    failures: list[BaseException] = []

    async def scenario() -> None:
        # the new leader read the head (number 1): the version the old leader's transaction expects
        old, stalled, new = await deposed_with_a_stalled_write(kv, tmp_path, failures)
        old.store.gate.set()  # the old leader's transaction arrives first
        with pytest.raises(Unavailable):
            await stalled
        await old.until(lambda: not old.service.leading, "the old leader to step down")
        taken = await ask(new.service, 1, order("taken", node="b", ref=1), node="b")
        assert seqs(taken) == [(2, False)] and new.service.leading, "the new leader numbers 2 and keeps leading"
        await old.until(lambda: old.service.markets["M"].durable == 2, "the old leader to adopt number 2")
        in_consul = [entry for key in kv.keys(batch_prefix("M"))
                     for entry in decode_batch(kv.get(key) or b"", SECRET, "M")]
        for entries in ([*in_consul], await read_all(new.service), await read_all(old.service)):
            assert [(e.seq, types_pb2.Command.FromString(e.command).client_order_id) for e in entries] == \
                [(1, ""), (2, "taken")], "the deposed leader's entry is in the log"
        await asyncio.to_thread(old.log.close)
        await asyncio.to_thread(new.log.close)

    run(scenario)
    assert not failures


def test_a_node_ahead_of_a_replica_is_told_unavailable_and_the_replica_verifies_its_leadership(
    consul: ConsulDevAgent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deposed leader that has not noticed yet (its session renewal is far off) is asked by a node that has
    applied more than it holds: a sign another replica leads. The node is told UNAVAILABLE (it retries, on the
    leader), not FAILED_PRECONDITION, and the replica's fenced probe is refused: it steps down."""
    kv = kv_of(consul)
    failures: list[BaseException] = []
    caplog.set_level(logging.INFO, logger="sequencer")

    async def scenario() -> None:
        old = Replica("old", kv, tmp_path / "old.sqlite3", failures, ttl=120)
        old.start()
        await old.leading()
        await ask(old.service, 0, order(ref=1))
        session = old.log.session
        assert session is not None
        kv.destroy_session(session)
        new = Replica("new", kv, tmp_path / "new.sqlite3", failures)
        new.start()
        await new.leading()
        await ask(new.service, 1, order(node="b", ref=1), order(node="b", ref=2), node="b")
        assert old.service.leading, "the old leader has not noticed (the test relies on its long TTL)"
        with pytest.raises(ExchangeError) as ahead:
            await ask(old.service, 3, order(node="b", ref=3), node="b")
        assert ahead.value.code.name == "UNAVAILABLE" and "may no longer lead" in str(ahead.value)
        await old.until(lambda: not old.service.leading and old.service.markets["M"].durable == 3,
                        "the old leader to step down and follow")
        assert "the fenced probe was refused by the store" in caplog.text
        await asyncio.to_thread(old.log.close)
        await asyncio.to_thread(new.log.close)

    run(scenario)
    assert not failures


@pytest.mark.parametrize("lost", ["answer", "request"])
def test_an_unknown_outcome_is_resolved_before_anything_is_answered_and_commits_exactly_once(
    consul: ConsulDevAgent, tmp_path: Path, lost: str
) -> None:
    kv = kv_of(consul)
    failures: list[BaseException] = []

    async def scenario() -> None:
        replica = Replica("r", kv, tmp_path / "r.sqlite3", failures)
        replica.start()
        await replica.leading()
        await ask(replica.service, 0, order(ref=1))
        if lost == "answer":
            replica.store.lose_answers = 1  # applied by Consul, the answer lost: a consistent read finds it
        else:
            replica.store.lose_requests = 1  # never applied: the same transaction is sent again
        before = replica.store.transactions
        assert seqs(await ask(replica.service, 1, order(ref=2), order(ref=3))) == [(2, False), (3, False)]
        assert replica.store.transactions - before == (1 if lost == "answer" else 2)
        assert seqs(await ask(replica.service, 3, order(ref=4))) == [(4, False)]
        assert [e.seq for e in await read_all(replica.service)] == [1, 2, 3, 4]
        assert replica.service.leading
        await asyncio.to_thread(replica.log.close)

    run(scenario)
    assert not failures


def test_consul_keeps_a_bounded_tail_and_a_replica_joining_later_copies_the_rest_from_a_peer(
    consul: ConsulDevAgent, tmp_path: Path
) -> None:
    kv = kv_of(consul)
    failures: list[BaseException] = []

    async def scenario() -> None:
        leader = Replica("leader", kv, tmp_path / "leader.sqlite3", failures, tail=10)
        leader.start()
        await leader.leading()
        applied = 0
        for number in range(40):
            answer = await ask(leader.service, applied, order(ref=2 * number + 1), order(ref=2 * number + 2))
            applied = answer.current_seq
        keys = kv.keys(batch_prefix("M"))
        retained = 80 - int(keys[0].rsplit("/", 1)[1]) + 1
        assert 10 <= retained <= 12, f"Consul keeps {retained} entries ({len(keys)} batches) with a tail of 10"
        assert kv.read(HEADS_PREFIX + "M") is not None

        def read_peer(market: str, from_seq: int, to_seq: int) -> Iterator[list[StoredEntry]]:
            yield leader.log.archive.read(market, from_seq, to_seq, to_seq - from_seq + 1)

        late = Replica("late", kv, tmp_path / "late.sqlite3", failures, tail=10, read_peer=read_peer)
        late.start()
        await late.until(lambda: late.service.markets["M"].durable == 80, "the late replica to follow")
        assert not late.service.leading
        assert [e.seq for e in await read_all(late.service)] == list(range(1, 81))
        assert await position(late.service) == 80
        # the leader goes; the late replica leads from exactly there
        await asyncio.to_thread(leader.log.close)
        await late.leading()
        assert seqs(await ask(late.service, 80, order(ref=1000))) == [(81, False)]
        assert LeaderRecord.decode(kv.get(SEQUENCER_LEADER_KEY)) == LeaderRecord("late", "127.0.0.1:1")
        await asyncio.to_thread(late.log.close)

    run(scenario)
    assert not failures


def test_a_replica_restarted_at_once_ends_its_previous_session_instead_of_waiting_for_its_ttl(
    consul: ConsulDevAgent, tmp_path: Path
) -> None:
    """Restarted at once on the same address, a replica answers the health check its dead run's session carries
    before that check ever fails: the old session would hold the lock for its TTL (10-20 s) and nobody could
    lead. The new run ends it first."""
    kv = kv_of(consul)
    failures: list[BaseException] = []

    async def scenario() -> None:
        first = Replica("same", kv, tmp_path / "a.sqlite3", failures, ttl=60)
        first.start()
        await first.leading()
        await ask(first.service, 0, order(ref=1))
        first.log._stop.set()  # it dies; its session lives on (a 60 s TTL, a check that keeps passing)
        first.store.dead = True
        stale = first.log.session
        assert stale in kv.sessions("sequencer same")
        again = Replica("same", kv, tmp_path / "a.sqlite3", failures)
        again.start()
        # within 8 s, not after the old session's 60 s TTL
        await again.until(lambda: again.service.leading, "the new run to lead", timeout=8)
        assert stale not in kv.sessions("sequencer same")
        assert seqs(await ask(again.service, 1, order(ref=2))) == [(2, False)]
        await asyncio.to_thread(again.log.close)

    run(scenario)
    assert not failures


def test_a_new_leader_whose_clock_is_behind_stamps_the_last_time_of_the_log_not_its_own(
    consul: ConsulDevAgent, tmp_path: Path
) -> None:
    """The old leader's clock is an hour ahead of the standby's; the standby follows, the old leader dies, the
    standby leads: its first entries carry the old leader's last time (time never goes backwards in the log),
    and it stamps its own clock again once that passes the log's time."""
    kv = kv_of(consul)
    failures: list[BaseException] = []
    ahead, behind = [1_700_003_600_000], [1_700_000_000_000]

    def stamps(response: Any) -> list[int]:
        return [types_pb2.Command.FromString(a.entry.command).time_ms for a in response.assignments]

    async def scenario() -> None:
        old = Replica("old", kv, tmp_path / "old.sqlite3", failures, clock=lambda: ahead[0])
        old.start()
        await old.leading()
        new = Replica("new", kv, tmp_path / "new.sqlite3", failures, clock=lambda: behind[0])
        new.start()
        assert stamps(await ask(old.service, 0, order(ref=1), order(ref=2))) == [ahead[0]] * 2
        await new.until(lambda: new.service.markets["M"].durable == 2, "the standby to adopt the old leader's entries")
        old.crash(kv)
        await new.leading()
        assert stamps(await ask(new.service, 2, order(node="b", ref=1), node="b")) == [ahead[0]]
        behind[0] = ahead[0] + 5
        assert stamps(await ask(new.service, 3, order(node="b", ref=2), node="b")) == [ahead[0] + 5]
        times = [types_pb2.Command.FromString(e.command).time_ms for e in await read_all(new.service)]
        assert times == sorted(times) and len(times) == 4
        await asyncio.to_thread(new.log.close)

    run(scenario)
    assert not failures
