"""The Sequencer's HA mode with real processes: three Consul servers, two Sequencer replicas on the replicated
log, three nodes. Under load: the leader SIGKILLed, the leader stalled past its session's TTL (and fenced when
it wakes), the Consul Raft leader killed; a node and a standby down past the tail Consul keeps. After each:
every acknowledged order exists exactly once, and the converged replicas equal a replay of the log."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import grpc
import pytest

from devtools.consul_agent import ConsulServers
from devtools.local_cluster import Cluster, wait_until
from devtools.verify import read_log, read_replica_log
from exchange.cluster_common import parse_markets, token_metadata
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc, types_pb2
from tests.integration.test_recovery import Load, checksums_equal_replay, every_acknowledged_order_once, node_stubs

pytestmark = pytest.mark.integration


def ha_cluster(make_cluster: Callable[..., Cluster], **options: object) -> Cluster:
    cluster = make_cluster(ha=True, **options)
    cluster.start()
    return cluster


def other(index: int) -> int:
    return 1 - index


def wait_leader(c: Cluster, index: int, timeout: float = 20.0) -> None:
    wait_until(lambda: c.leader_index() == index, timeout, f"sequencer-{index + 1} to lead")


def wait_standby_current(c: Cluster, index: int, timeout: float = 30.0) -> None:
    """Replica `index` is a standby that has reached the leader's position (as it was just before) in every
    market."""
    markets = [m.symbol for m in parse_markets(c.markets)]

    def current() -> bool:
        leader = c.leader_index()
        if leader is None or leader == index:
            return False
        try:
            goals = {m: c.sequencer_view(leader, m)[1] for m in markets}
            views = {m: c.sequencer_view(index, m) for m in markets}
        except grpc.RpcError:
            return False
        return all(views[m][0] == "standby" and views[m][1] >= goals[m] for m in markets)

    wait_until(current, timeout, f"sequencer-{index + 1} to follow as a standby, current")


def test_the_leader_sigkilled_under_load_a_standby_takes_over_and_no_acknowledged_order_is_lost_or_doubled(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = ha_cluster(make_cluster)
    markets = [m.symbol for m in parse_markets(c.markets)]
    leader = c.leader_index()
    assert leader is not None
    with node_stubs(c) as stubs:
        load = Load(stubs, targets=[0, 1, 2], markets=markets, threads=6, unique_ids=True).start()
        try:
            load.wait_for_more_ok(100, 30, "before the leader is killed")
            c.sequencers[leader].kill()
            killed_at = time.monotonic()
            wait_leader(c, other(leader))
            resumed = load.counts()[0]
            load.wait_for_more_ok(100, 30, "after the standby took over")
            print(f"the standby leads {time.monotonic() - killed_at:.2f}s after the SIGKILL")
            wait_until(lambda: {target for target, _, _ in load.ok[resumed:]} == {0, 1, 2}, 30,
                       "every node to place orders on the new leader")
            c.start_sequencer(leader)  # the old leader comes back as a standby
            wait_standby_current(c, leader)
            load.wait_for_more_ok(50, 30, "with the old leader back as a standby")
        finally:
            load.stop()
        every_acknowledged_order_once(c, stubs, load)
    wait_standby_current(c, leader)
    for market in markets:  # the standby's archive is the leader's log, entry for entry
        entries = read_log(c, market)
        assert entries == read_replica_log(c, leader, market)
        times = [types_pb2.Command.FromString(entry.command).time_ms for entry in entries]
        assert all(times) and times == sorted(times), f"{market}: time went backwards across the failover"


@pytest.mark.timeout(180)
def test_a_leader_stalled_past_its_session_ttl_is_replaced_and_when_it_wakes_consul_refuses_it_and_it_follows(
    make_cluster: Callable[..., Cluster],
) -> None:
    """SIGSTOP the leader for longer than its session's TTL (10 s): its health check fails, Consul ends its
    session, the standby takes the lock and trading resumes. A gate request sent to the stalled leader waits in
    its socket. On SIGCONT the old leader still believes it leads: its next fenced transaction (the batch
    of that request, or a probe after its refused session renewal) is refused by Consul, it answers the request
    UNAVAILABLE without numbering it, steps down and follows the new leader as a standby."""
    c = ha_cluster(make_cluster)
    markets = [m.symbol for m in parse_markets(c.markets)]
    old = c.leader_index()
    assert old is not None
    stalled = c.sequencers[old]
    with node_stubs(c) as stubs, c.channel(c.sequencer_address_of(old)) as channel:
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        load = Load(stubs, targets=[0, 1, 2], markets=markets, threads=4, unique_ids=True).start()
        try:
            load.wait_for_more_ok(50, 30, "before the stall")
            stalled.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                wait_leader(c, other(old), timeout=30)
                took_over = time.monotonic() - stopped_at
                load.wait_for_more_ok(50, 30, "while the old leader is stalled")
                late = stub.Sequence.future(sequencer_pb2.SequenceRequest(  # granted, if it still led
                    market=markets[0], applied_seq=0, node_id="late", commands=[types_pb2.Command(
                        market=markets[0], origin_node="late", origin_ref=1, client_order_id="late-1",
                        new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1,
                                                            price=100))]),
                    timeout=60, metadata=token_metadata(c.secret.encode()))
                time.sleep(max(0.0, 12.0 - (time.monotonic() - stopped_at)))  # past the session's TTL
            finally:
                stalled.signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as refused:
                late.result(timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            wait_standby_current(c, old)  # it stepped down and follows
            # Whether check-session or the head's compare-and-set refused it cannot be told apart here (the new
            # leader has committed since); test_replicated_log has a deposed leader's write arrive first.
            load.wait_for_more_ok(30, 30, "after the old leader woke up")
        finally:
            load.stop()
        print(f"the standby led {took_over:.2f}s after the SIGSTOP")
        every_acknowledged_order_once(c, stubs, load)
    for market in markets:
        assert "late-1" not in {types_pb2.Command.FromString(e.command).client_order_id for e in read_log(c, market)}


def test_losing_the_consul_raft_leader_under_load_pauses_trading_for_seconds_and_loses_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = ha_cluster(make_cluster)
    consul = c.consul
    assert isinstance(consul, ConsulServers)
    markets = [m.symbol for m in parse_markets(c.markets)]
    raft_leader = consul.leader_index()
    assert raft_leader is not None
    with node_stubs(c) as stubs:
        load = Load(stubs, targets=[0, 1, 2], markets=markets, threads=4, unique_ids=True).start()
        try:
            load.wait_for_more_ok(50, 30, "before the Consul leader is killed")
            consul.servers[raft_leader].kill()
            killed_at, before = time.monotonic(), load.counts()[0]
            wait_until(lambda: consul.leader_index() not in (None, raft_leader), 30, "a new Consul leader")
            load.wait_for_more_ok(50, 45, "after Consul elected a new leader")
            print(f"Consul server {raft_leader + 1} (the Raft leader) killed: {load.counts()[0] - before} orders "
                  f"placed in the {time.monotonic() - killed_at:.1f}s until 50 more were")
            consul.servers[raft_leader].start()
            load.wait_for_more_ok(30, 30, "with the server back")
        finally:
            load.stop()
        every_acknowledged_order_once(c, stubs, load)


def test_past_the_tail_consul_keeps_a_node_rejoins_from_a_snapshot_and_a_standby_from_the_leaders_archive(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = ha_cluster(make_cluster, extra_sequencer_args=["--consul-tail", "50"],
                   extra_node_args=["--snapshot-threshold", "100"])
    markets = [m.symbol for m in parse_markets(c.markets)]
    leader = c.leader_index()
    assert leader is not None
    standby = other(leader)
    with node_stubs(c) as stubs:
        c.nodes[2].stop()
        c.sequencers[standby].stop()
        load = Load(stubs, targets=[0, 1], markets=markets, threads=4, unique_ids=True).start()
        try:
            load.wait_for_more_ok(400, 60, "while node-3 and the standby are down")
        finally:
            load.stop()
        c.start_sequencer(standby)
        wait_standby_current(c, standby)
        assert "from another replica (the store keeps only its tail)" in c.sequencers[standby].read_log()
        c.start_node(2)
        assert "restored from node-" in c.nodes[2].read_log(), "node-3 should rejoin from a peer's snapshot"
        views = c.wait_converged(nodes=[0, 1, 2])
        checksums_equal_replay(c, views)
        for market in markets:  # the oldest entries are in no Consul key, only in the replicas' archives
            assert read_replica_log(c, standby, market) == read_log(c, market)
            assert len(read_replica_log(c, standby, market)) == views[market][0]
        every_acknowledged_order_once(c, stubs, load)
