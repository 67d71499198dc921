"""What a node keeps is bounded by what is live or by its window (the last --journal-size commands of a market),
each window's edge answers as docs/operations.md says, and a node restarted from its own snapshot equals one that
replayed the whole log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest

from exchange import engine as eng
from exchange.errors import FailedPrecondition, Unavailable
from exchange.node.auth import AccessControl, Caller
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.orders import OrderEntryRPCs
from exchange.node.reads import ReadRPCs, applied_entries
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.node.snapshots import SnapshotStore, Snapshotter
from exchange.node.trader_view import TraderViewRPCs
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import Aborted, FakeContext, InMemorySequencer, RecordingPeers, run_scenario, signed_entry

M = "BTC-USD"
WINDOW = 4


def command(seq: int) -> types_pb2.SequencedCommand:
    """Order `seq`: seq 1 rests (a bid far below the rest); every other one is an IOC sell that finds nothing
    to trade and is cancelled at once (a finished order)."""
    if seq == 1:
        order = types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=3, price=10)
    else:
        order = types_pb2.NewOrderCommand(side=types_pb2.SELL, order_type=types_pb2.IOC, size=2, price=100)
    return signed_entry(M, seq, types_pb2.Command(market=M, new_order=order, client_order_id=f"c{seq}"))


def fed(count: int, window: int = WINDOW) -> Replica:
    replica = Replica([eng.MarketConfig(M)], journal_size=window)
    for seq in range(1, count + 1):
        replica.offer(command(seq))
    return replica


def services(replica: Replica) -> tuple[TraderViewRPCs, ReadRPCs]:
    node, gate = NodeState("node-1", SERVING), AccessControl(None, None)
    sequencer = InMemorySequencer()
    pipeline = MarketPipeline(M, replica, sequencer, RecordingPeers(), "node-1")
    return (TraderViewRPCs(node, replica, gate),
            ReadRPCs(node, replica, {M: pipeline}, sequencer, RecordingPeers(), None))


def get_order(replica: Replica, order_id: int) -> pb.Order:
    trader_view, _ = services(replica)
    return run_scenario(trader_view.GetOrder(pb.GetOrderRequest(market=M, order_id=order_id), FakeContext()))


def first_streamed(replica: Replica, method: str, from_seq: int) -> Any:
    """The first item of StreamEvents or StreamOrders resumed from `from_seq`."""
    trader_view, reads = services(replica)
    handler = trader_view.StreamOrders if method == "StreamOrders" else reads.StreamEvents
    request_type = pb.StreamOrdersRequest if method == "StreamOrders" else pb.StreamEventsRequest

    async def first() -> Any:
        stream: AsyncIterator[Any] = handler(request_type(market=M, from_seq=from_seq), FakeContext())
        return await asyncio.wait_for(stream.__anext__(), 5)

    return run_scenario(first())


def test_every_structure_of_the_window_is_bounded_by_it() -> None:
    replica = fed(10 * WINDOW)
    state = replica._states[M]
    assert len(state.journal) == WINDOW
    assert len(state.finished) <= WINDOW
    assert len(state.client_order_ids) <= WINDOW
    assert sum(map(len, state.resting_by_account.values())) == 1, "only the resting order, however old"


def test_get_order_of_a_finished_order_answers_inside_the_window_and_is_not_found_outside() -> None:
    replica = fed(10)  # the window: commands 7..10
    assert replica.oldest_journaled(M) == 7
    inside = get_order(replica, 7)
    assert (inside.status, inside.size, inside.filled_size, inside.client_order_id) == (pb.CANCELLED, 2, 0, "c7")
    assert inside.side == types_pb2.SELL and inside.order_type == types_pb2.IOC
    with pytest.raises(Aborted) as outside:
        get_order(replica, 6)
    assert outside.value.code == grpc.StatusCode.NOT_FOUND
    assert "keeps finished orders only from sequence 7 on (the last 4 commands" in outside.value.details
    with pytest.raises(Aborted) as unknown:
        get_order(replica, 11)
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND and "there is no order 11" in unknown.value.details


def test_a_resting_order_is_answered_in_full_however_old() -> None:
    resting = get_order(fed(10), 1)
    assert (resting.status, resting.order_type, resting.client_order_id, resting.remaining_size) == (
        pb.RESTING, types_pb2.LIMIT, "c1", 3)


@pytest.mark.parametrize("method", ["StreamEvents", "StreamOrders"])
def test_a_stream_resumes_inside_the_window_and_is_out_of_range_before_it(method: str) -> None:
    replica = fed(10)
    assert first_streamed(replica, method, 7).seq == 7
    with pytest.raises(Aborted) as outside:
        first_streamed(replica, method, 6)
    assert outside.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert "before sequence 7 are no longer retained" in outside.value.details


def test_a_retried_client_order_id_is_known_inside_the_window_only() -> None:
    replica = fed(10)
    assert replica.order_of_client_id(M, "", "c7") == 7
    assert replica.retained_result(M, 7, "c7").seq == 7
    assert replica.order_of_client_id(M, "", "c6") is None, "left the window: the Sequencer's dedup decides"


def test_a_node_restarted_from_its_snapshot_equals_one_that_replayed_the_whole_log(tmp_path: Path) -> None:
    log = [command(seq) for seq in range(1, 301)]
    running = Replica([eng.MarketConfig(M)], journal_size=50)
    snapshotter = Snapshotter(SnapshotStore(tmp_path), running, "node-1", every=100)
    for entry in log[:200]:
        running.offer(entry)
    snapshotter.save_now()  # as at a graceful stop (or the periodic one)

    restarted = Replica([eng.MarketConfig(M)], journal_size=50)
    assert SnapshotStore(tmp_path).restore(restarted, {M: 300}) is not None
    assert restarted.applied_seq(M) == 200
    assert restarted.oldest_journaled(M) == 201, "the journal starts at the snapshot (documented)"
    for entry in log[200:]:  # only the log after the snapshot: it is all the restarted node is given
        restarted.offer(entry)
    replayed = Replica([eng.MarketConfig(M)], journal_size=50)
    for entry in log:
        replayed.offer(entry)
    assert restarted.applied_seq(M) == replayed.applied_seq(M) == 300
    assert restarted.checksum(M) == replayed.checksum(M)
    assert get_order(restarted, 1).client_order_id == "c1", "a resting order keeps its client_order_id"


def test_the_store_keeps_the_last_two_and_falls_back_on_a_damaged_one(tmp_path: Path) -> None:
    replica = Replica([eng.MarketConfig(M)])
    store = SnapshotStore(tmp_path)
    snapshotter = Snapshotter(store, replica, "node-1")
    for seq in range(1, 31):
        replica.offer(command(seq))
        if seq % 10 == 0:
            snapshotter.save_now()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["snapshot-00000000000000000020.pb", "snapshot-00000000000000000030.pb"]
    files[-1].write_bytes(b"\x00damaged")
    restored = Replica([eng.MarketConfig(M)])
    assert store.restore(restored, {M: 30}) == files[0]
    assert restored.applied_seq(M) == 20


def test_a_snapshot_ahead_of_the_log_is_set_aside_for_good(tmp_path: Path) -> None:
    for count in (30, 20):
        Snapshotter(SnapshotStore(tmp_path), fed(count), "node-1").save_now()
    fresh = Replica([eng.MarketConfig(M)])
    store = SnapshotStore(tmp_path, keep=2)
    assert store.restore(fresh, {M: 10}) is None  # the log was reset, or is another cluster's
    assert fresh.applied_seq(M) == 0
    # The new log passes them: they are still not its state, and a snapshot of it is not rotated out for them.
    assert store.restore(fresh, {M: 40}) is None and fresh.applied_seq(M) == 0
    written = store.save(Snapshotter(store, fed(12), "node-1")._data()[0], 12)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "ahead-of-log-snapshot-00000000000000000020.pb", "ahead-of-log-snapshot-00000000000000000030.pb", written.name]


def test_a_stream_that_stops_reading_holds_at_most_its_limit_and_then_ends_unavailable() -> None:
    replica = fed(2)

    async def scenario() -> None:
        stream = applied_entries(replica, M, 0)
        assert isinstance(stream, AsyncGenerator)  # closed at the end
        reading = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # subscribed, waiting for the next entry
        for seq in range(3, 10):
            replica.offer(command(seq))
        assert (await reading).seq == 3
        queue = next(iter(replica._states[M].listeners))
        assert queue.qsize() == 6
        with mock.patch("exchange.node.reads.STREAM_QUEUE_LIMIT", 4):
            slow = applied_entries(replica, M, 0)
            assert isinstance(slow, AsyncGenerator)
            waiting = asyncio.ensure_future(slow.__anext__())
            await asyncio.sleep(0)
        for seq in range(10, 16):  # the slow reader falls 4 behind: dropped, it holds no more than that
            replica.offer(command(seq))
        assert (await waiting).seq == 10
        with pytest.raises(Unavailable, match="fell too far behind"):
            await slow.__anext__()
        await stream.aclose()
        await slow.aclose()
        assert not replica._states[M].listeners

    run_scenario(scenario())


def test_after_a_restart_a_retry_from_before_the_snapshot_is_not_placed_again(tmp_path: Path) -> None:
    """The node's own snapshot has no window keys: the Sequencer's dedup window finds the order, and the node,
    which no longer has its result, names it (FAILED_PRECONDITION), as the README says."""
    sequencer = InMemorySequencer()
    for seq in range(1, 201):
        sequencer.append(types_pb2.Command.FromString(command(seq).command))
    running = Replica([eng.MarketConfig(M)])
    for entry in sequencer.log[M]:
        running.offer(entry)
    Snapshotter(SnapshotStore(tmp_path), running, "node-1").save_now()
    restarted = Replica([eng.MarketConfig(M)])
    assert SnapshotStore(tmp_path).restore(restarted, {M: 200}) is not None
    assert restarted.order_of_client_id(M, "", "c180") is None, "the window's keys are not in its own snapshot"

    async def retry() -> None:
        pipeline = MarketPipeline(M, restarted, sequencer, RecordingPeers(), "node-1")
        pipeline.start()
        entry = OrderEntryRPCs(NodeState("node-1", SERVING), restarted, {M: pipeline}, sequencer,
                               AccessControl(None, None))
        request = pb.CreateOrderRequest(market=M, side=types_pb2.SELL, order_type=types_pb2.IOC, size=2,
                                        limit_price=100, client_order_id="c180")
        try:
            with pytest.raises(FailedPrecondition, match="'c180' is order 180 of BTC-USD"):
                await asyncio.wait_for(entry._place(request, Caller("", "")), 10)
        finally:
            await pipeline.stop()

    run_scenario(retry())
    assert sequencer.current(M) == 200, "nothing was placed"
