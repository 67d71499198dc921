"""The HA log's batches in the replicated store, over a dict standing in for Consul's KV (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

from discovery import AccessDenied, CompareAndSet, Delete, DiscoveryError, Put, Versioned
from exchange.cluster_common import LeaderRecord
from exchange.entry_signing import entry_mac
from exchange.v1 import types_pb2
from sequencer.ha.records import (
    Fenced,
    Head,
    LogUnavailable,
    batch_firsts,
    batch_key,
    batch_prefix,
    encode_batch,
    head_key,
)
from sequencer.log import StoredEntry
from sequencer.replicated import ReplicatedLog
from sequencer.store import LogStore
from tests.unit.fakes import run_scenario


class DictStore:
    """What a takeover and a commit use of a ReplicatedStore: keys listed in order, as Consul lists them."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.last_txn: list[object] = []

    def read(self, key: str, consistent: bool = False) -> Versioned | None:
        return None if key not in self.values else Versioned(self.values[key], 7)

    def keys(self, prefix: str) -> list[str]:
        return sorted(key for key in self.values if key.startswith(prefix))

    def transact(self, ops: list[object]) -> dict[str, int]:
        self.last_txn = ops
        for op in ops:
            if isinstance(op, CompareAndSet | Put):
                self.values[op.key] = op.value
            elif isinstance(op, Delete):
                del self.values[op.key]
        return {op.key: 8 for op in ops if isinstance(op, CompareAndSet)}


SECRET = b"ha-batches-secret"


class Gate:
    """The gate's role callbacks, doing nothing."""

    def adopt(self, *_: object) -> None: ...
    def lead(self, resumed: bool = False) -> None: ...


def entries(market: str, first: int, last: int, secret: bytes = SECRET) -> list[StoredEntry]:
    command = types_pb2.Command(market=market).SerializeToString()
    return [StoredEntry(market, seq, None, command, entry_mac(secret, market, seq, command))
            for seq in range(first, last + 1)]


def test_batch_firsts_are_only_the_markets_own_in_order() -> None:
    keys = [batch_key("BTC", 12), batch_key("BTC/USD", 1), batch_key("BTC", 3), f"{batch_prefix('BTC')}x",
            batch_key("BTC/USD/X", 2), batch_key("ETH", 1)]
    assert batch_firsts(keys, "BTC") == [3, 12]
    assert batch_firsts(keys, "BTC/USD") == [1]


def test_a_takeover_counts_only_its_markets_batches_when_another_symbol_extends_its_own(tmp_path: Path) -> None:
    store = DictStore()
    store.values[head_key("BTC")] = Head(2, 1, "old", (1,)).encode()
    store.values[batch_key("BTC", 1)] = encode_batch(entries("BTC", 1, 2))
    store.values[head_key("BTC/USD")] = Head(9, 7, "old", (1, 4, 7)).encode()
    for first in (1, 4, 7):
        store.values[batch_key("BTC/USD", first)] = encode_batch(entries("BTC/USD", first, first + 2))

    async def scenario() -> None:
        replica = ReplicatedLog(store, LogStore(tmp_path / "a.db"), ["BTC", "BTC/USD"],  # type: ignore[arg-type]
                                LeaderRecord("r", "x:1"), [], secret=SECRET, tail_entries=1)
        replica._loop, replica._gate, replica.session = asyncio.get_running_loop(), Gate(), "s1"  # type: ignore[assignment]
        replica._take_over()
        btc = replica._markets["BTC"]
        assert list(btc.batches) == [(1, 2)]
        replica._commit(btc, "s1", entries("BTC", 3, 3))  # past the tail of 1: BTC's own batch goes
        assert [op.key for op in store.last_txn if isinstance(op, Delete)] == [batch_key("BTC", 1)]
        assert all(batch_key("BTC/USD", first) in store.values for first in (1, 4, 7))

    run_scenario(scenario())


@pytest.mark.parametrize("forged", ["mac", "market"])
def test_a_batch_in_the_store_not_signed_for_its_market_is_never_archived(tmp_path: Path, forged: str) -> None:
    """The store is writable by more than the Sequencer (a management token): a replica that took a batch it
    cannot verify into its archive would serve it to every node when it leads."""
    store = DictStore()
    good = entries("BTC", 1, 2)
    bad = entries("BTC", 3, 3, secret=b"not the cluster's") if forged == "mac" else \
        [entry._replace(market="ETH") for entry in entries("ETH", 3, 3)]
    store.values[head_key("BTC")] = Head(3, 3, "old", (1, 3)).encode()
    store.values[batch_key("BTC", 1)] = encode_batch(good)
    store.values[batch_key("BTC", 3)] = encode_batch(bad)

    async def scenario() -> None:
        archive = LogStore(tmp_path / "a.db")
        replica = ReplicatedLog(store, archive, ["BTC"], LeaderRecord("r", "x:1"), [],  # type: ignore[arg-type]
                                secret=SECRET)
        replica._loop, replica._gate, replica.session = asyncio.get_running_loop(), Gate(), "s1"  # type: ignore[assignment]
        with pytest.raises(LogUnavailable, match="not signed"):
            replica._catch_up(replica._markets["BTC"], 3)
        assert replica._markets["BTC"].position == 2  # the good batch only

    run_scenario(scenario())


@pytest.mark.parametrize("refusal", [AccessDenied("Consul refused a transaction: Permission denied"),
                                     DiscoveryError("Consul answered 500")])
def test_a_transaction_the_store_fails_at_once_is_not_sent_again_in_a_tight_loop(
    tmp_path: Path, refusal: DiscoveryError,
) -> None:
    """A 403 applied nothing and sending it again cannot help: the replica is fenced, so it steps down (it was taken
    for an unknown outcome and sent ~11,000 times in 0.2 s; then it failed the write, which stops the process, for
    a refusal a Consul agent can give a valid token for a while). Any other failure whose head read says "not
    committed" is sent again, after a growing pause, until the replica stops."""

    class FailingStore:
        calls = 0

        def transact(self, ops: list[object]) -> dict[str, int]:
            FailingStore.calls += 1
            raise refusal

        def read(self, key: str, consistent: bool = False) -> None:
            return None  # the head is not this transaction's: not committed

    class Pauses(threading.Event):
        """The commit thread's stop event: records each pause and stops the commit after five of them."""

        def __init__(self) -> None:
            super().__init__()
            self.pauses: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.pauses.append(timeout or 0.0)
            if len(self.pauses) == 5:
                self.set()
            return self.is_set()

    replica = ReplicatedLog(FailingStore(), LogStore(tmp_path / "a.db"), ["BTC"],  # type: ignore[arg-type]
                            LeaderRecord("r", "x:1"), [], secret=SECRET)
    pauses = replica._stop = Pauses()
    with pytest.raises(Fenced):
        replica._commit(replica._markets["BTC"], "s1", entries("BTC", 1, 1))
    if isinstance(refusal, AccessDenied):
        assert FailingStore.calls == 1 and pauses.pauses == []
    else:
        assert FailingStore.calls == 5 and pauses.pauses == [0.05, 0.1, 0.2, 0.4, 0.8]


def test_a_replica_catching_up_from_peers_asks_the_next_for_what_the_first_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first peer that answered ended the read even when it held fewer entries than asked: the replica then
    stayed unable to catch up while another peer held them."""
    from exchange.v1 import sequencer_pb2, types_pb2
    from sequencer import main

    def signed(seq: int) -> types_pb2.SequencedCommand:
        command = types_pb2.Command(market="BTC").SerializeToString()
        return types_pb2.SequencedCommand(market="BTC", seq=seq, command=command,
                                          mac=entry_mac(SECRET, "BTC", seq, command))

    holdings = {"short:1": 5, "full:1": 9}  # each peer's archive ends there
    asked: list[tuple[str, int]] = []

    class Stub:
        def __init__(self, target: str) -> None:
            self.target = target

        def ReadLog(self, request: sequencer_pb2.ReadLogRequest, **_: object) -> list[sequencer_pb2.LogBatch]:
            asked.append((self.target, request.from_seq))
            last = min(request.to_seq, holdings[self.target])
            return [sequencer_pb2.LogBatch(entries=[signed(s) for s in range(request.from_seq, last + 1)])]

    class Instance(NamedTuple):
        instance_id: str
        target: str

    class Registry:
        def healthy(self, service: str) -> list[Instance]:
            return [Instance("me", "me:1"), Instance("short", "short:1"), Instance("full", "full:1")]

    monkeypatch.setattr(main, "sync_channel", lambda target, tls: contextlib.nullcontext(target))
    monkeypatch.setattr(main.sequencer_pb2_grpc, "SequencerStub", Stub)
    read = main.peer_reader(Registry(), "me", SECRET, None)  # type: ignore[arg-type]
    got = [entry.seq for batch in read("BTC", 3, 9) for entry in batch]
    assert got == list(range(3, 10)) and asked == [("short:1", 3), ("full:1", 6)]
