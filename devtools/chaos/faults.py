"""The chaos checker's faults: the schedule derived from the seed, and each fault kind but replays.

kill (SIGKILL a node, restart it), stop (SIGSTOP/SIGCONT a node), partition (cut a node's link or degrade
it with netem, in network namespaces), sequencer (SIGKILL the Sequencer, restart it), consul (restart the
Consul agent); replay (genuine and forged broadcasts) is in replays.py. Each fault also checks what it
promises: the other nodes keep trading, UNAVAILABLE while the Sequencer is gone, resumption, and
re-registration in Consul (seen through the product's discovery, discovery.consul.ConsulRegistry).

HA mode (--ha): kill-leader (SIGKILL the leading Sequencer replica: a standby leads and every node trades
again within seconds; the replica restarted comes back a current standby), stall-leader (SIGSTOP the leader
past its session's TTL: every node trades on the new leader meanwhile; woken, the old one is refused by Consul,
steps down and follows), kill-consul-server (SIGKILL the Consul Raft leader: trading pauses for seconds and
resumes on every node; the server is restarted).
"""

from __future__ import annotations

import random
import signal
import threading
import time

import grpc

from devtools.chaos.records import Config, Ledger, OrderRecord
from devtools.chaos.replays import Replays
from devtools.chaos.workload import Clients
from devtools.consul_agent import ConsulServers
from devtools.local_cluster import Cluster, wait_until
from discovery import DiscoveryError
from discovery.consul import ConsulRegistry
from exchange.shared.wire import PEER_SERVICE, SEQUENCER_SERVICE, split_host_port

Fault = tuple[float, str, int, float, str]  # (start time, kind, node, hold seconds, variant)


class Faults:
    """Runs the schedule (`run`, in its own thread) until `done` is set; `finished` is set when it ends."""

    def __init__(self, config: Config, cluster: Cluster, ledger: Ledger, clients: Clients, markets: list[str],
                 done: threading.Event) -> None:
        self.config = config
        self.cluster = cluster
        self.ledger = ledger
        self.stats = ledger.stats
        self.clients = clients
        self.done = done
        self.finished = threading.Event()
        self.replays = Replays(config.seed, cluster, ledger, markets, clients.probe_stubs)
        self.netem = cluster.netns is not None and cluster.netns.netem_available()
        if cluster.netns is not None and not self.netem:
            ledger.out("tc netem is not available in this kernel (no sch_netem): every partition cuts the link")

    def schedule(self) -> list[Fault]:
        """(start time, kind, node, hold seconds, variant) for each fault, all from the seed."""
        kinds = list(self.config.faults)
        if not kinds:
            return []
        rng = random.Random(f"{self.config.seed}-faults")
        window_start, window_end = 0.1 * self.config.duration, 0.8 * self.config.duration
        count = max(len(kinds), int((window_end - window_start) // 14))
        order: list[str] = []
        while len(order) < count:
            batch = kinds[:]
            rng.shuffle(batch)
            order.extend(batch)
        slot = (window_end - window_start) / count
        plan = []
        for number, kind in enumerate(order[:count]):
            at = window_start + number * slot + rng.uniform(0, slot * 0.2)
            hold = {"kill": rng.uniform(2, 5), "stop": rng.uniform(3, 6), "partition": rng.uniform(3, 6),
                    "sequencer": rng.uniform(6.5, 8), "consul": rng.uniform(3, 6), "replay": rng.uniform(2, 4),
                    "kill-leader": rng.uniform(3, 6), "stall-leader": rng.uniform(11, 13),  # past the 10 s TTL
                    "kill-consul-server": rng.uniform(3, 6)}[kind]
            variant = rng.choice(["cut", "netem"]) if kind == "partition" else ""
            if variant == "netem" and not self.netem:
                variant = "cut (no netem here)"
            plan.append((at, kind, rng.randrange(self.config.nodes), hold, variant))
        return plan

    def run(self) -> None:
        try:
            for at, kind, node, hold, variant in self.schedule():
                if self.done.wait(max(0.0, self.ledger.started + at - time.monotonic())):
                    return
                self.stats.faults[kind] += 1
                self.ledger.note(f"fault {kind} node-{node + 1} hold {hold:.1f}s {variant}".rstrip())
                try:
                    getattr(self, f"fault_{kind.replace('-', '_')}")(node, hold, variant)
                except Exception as error:  # noqa: BLE001 - a fault that cannot be injected is a finding
                    self.ledger.violation(f"fault {kind} on node-{node + 1} failed: {type(error).__name__}: {error}")
        finally:
            self.finished.set()

    def failed(self, record: OrderRecord) -> bool:
        """Whether a probe failed (one cut short by the run's time limit did not fail: it was not tried)."""
        return record.final != "OK" and not self.ledger.expired.is_set()

    def others_trade(self, node: int, what: str) -> None:
        """Every node but `node` must take an order while the fault lasts (`what` describes it)."""
        for other in range(self.config.nodes):
            if other != node:
                record = self.clients.probe(other, f"{self.stats.faults.total()}-{other + 1}", attempts=2)
                if self.failed(record):
                    self.ledger.violation(f"while {what}, node-{other + 1} did not take an order: {record.attempts}")

    def hold_while(self, node: int, what: str, hold: float) -> None:
        """Checks that the others trade, then keeps the fault on until `hold` seconds have passed."""
        started = time.monotonic()
        self.others_trade(node, what)
        time.sleep(max(0.0, hold - (time.monotonic() - started)))

    def fault_kill(self, node: int, hold: float, variant: str) -> None:
        name = self.cluster.nodes[node].name
        self.ledger.expected_down.add(name)
        self.cluster.nodes[node].kill()
        time.sleep(hold)
        try:
            self.cluster.start_node(node)
        finally:
            self.ledger.expected_down.discard(name)
        self.note_restart(node)

    def note_restart(self, node: int) -> None:
        """Counts how a restarted node got its state (GetStatus counters): its own snapshot, then a peer's."""
        try:
            counters = dict(self.cluster.status(node).counters)
        except grpc.RpcError:
            return  # it is already down again (a later fault): its start is not counted
        self.stats.add("restarts_own_snapshot", counters.get("started_from_own_snapshot", 0))
        self.stats.add("restarts_peer_snapshot", counters.get("started_from_peer_snapshot", 0))

    def fault_stop(self, node: int, hold: float, variant: str) -> None:
        process = self.cluster.nodes[node]
        process.signal(signal.SIGSTOP)
        try:
            self.hold_while(node, f"node-{node + 1} was SIGSTOPped", hold)
        finally:
            process.signal(signal.SIGCONT)

    def fault_partition(self, node: int, hold: float, variant: str) -> None:
        netem = ["delay", "100ms", "30ms", "loss", "25%"] if variant == "netem" and self.netem else None
        self.cluster.partition(node, netem)
        variant = "netem " + " ".join(netem) if netem else "link cut"
        try:
            self.hold_while(node, f"node-{node + 1} was partitioned ({variant})", hold)
        finally:
            self.cluster.heal(node)

    def fault_sequencer(self, node: int, hold: float, variant: str) -> None:
        assert self.cluster.sequencer is not None
        self.ledger.expected_down.add("sequencer")
        self.cluster.sequencer.kill()
        started = time.monotonic()
        try:
            # The node retries the Sequencer for a while, then must answer UNAVAILABLE (not hang).
            record = self.clients.probe(node, "seq-down", timeout=15.0)
            if record.attempts != [(node, "UNAVAILABLE")] and not self.ledger.expired.is_set():
                self.ledger.violation(f"with the Sequencer down, node-{node + 1} answered {record.attempts} "
                                      "instead of UNAVAILABLE")
            time.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            self.cluster.start_sequencer()
            self.ledger.expected_down.discard("sequencer")
        for other in range(self.config.nodes):  # every node resumes by itself
            record = self.clients.probe(other, f"seq-back-{other + 1}", attempts=20, timeout=5.0)
            if self.failed(record):
                self.ledger.violation(f"node-{other + 1} did not resume after the Sequencer restarted: "
                                      f"{record.attempts}")

    def fault_consul(self, node: int, hold: float, variant: str) -> None:
        self.ledger.expected_down.add("consul")
        self.cluster.consul.stop()
        try:
            self.hold_while(-1, "Consul was down", hold)
        finally:
            self.cluster.consul.start()
            self.cluster.restore_accounts()  # the dev agent keeps nothing (a real Consul keeps its data)
            self.ledger.expected_down.discard("consul")
        wanted = {self.cluster.node_id(i) for i in range(self.config.nodes)}
        try:
            wait_until(lambda: self.registered(PEER_SERVICE) >= wanted and bool(self.registered(SEQUENCER_SERVICE)), 30,
                       "the nodes and the Sequencer to re-register in Consul", interval=0.5)
        except TimeoutError as error:
            self.ledger.violation(f"after the Consul restart: {error} (registered: "
                                  f"{sorted(self.registered(PEER_SERVICE))}, sequencer: "
                                  f"{sorted(self.registered(SEQUENCER_SERVICE))})")

    def registered(self, service: str) -> set[str]:
        """The ids of `service`'s instances passing in Consul now (empty if Consul does not answer)."""
        host, port = split_host_port(self.cluster.consul_address)
        registry = ConsulRegistry(host, port, request_timeout=2.0)
        try:
            return {instance.instance_id for instance in registry.healthy(service)}
        except DiscoveryError:
            return set()
        finally:
            registry.close()

    def fault_replay(self, node: int, hold: float, variant: str) -> None:
        self.replays.run(self.stats.faults["replay"], hold)

    # -- HA mode ------------------------------------------------------------------------------------

    def leader(self) -> int:
        """The leading Sequencer replica (waiting for one: a previous fault may have left a takeover going)."""
        wait_until(lambda: self.cluster.leader_index() is not None, 30, "a Sequencer replica to lead")
        leader = self.cluster.leader_index()
        assert leader is not None
        return leader

    def every_node_trades(self, what: str, started: float, hold: float, attempts: int = 3) -> None:
        """Every node must take an order (retried a few times: a takeover may be under way); then the fault
        holds until `hold` seconds after `started`."""
        for node in range(self.config.nodes):
            record = self.clients.probe(node, f"{self.stats.faults.total()}-{node + 1}", attempts=attempts)
            if self.failed(record):
                self.ledger.violation(f"{what}, node-{node + 1} did not take an order: {record.attempts}")
        self.ledger.note(f"every node traded again {time.monotonic() - started:.1f}s {what}")
        time.sleep(max(0.0, hold - (time.monotonic() - started)))

    def standby_follows(self, index: int, what: str) -> None:
        """Replica `index` is a standby that reaches the leader's position."""
        cluster = self.cluster
        name = cluster.sequencer_name(index)
        def following(goal: int) -> bool:
            try:
                role, position = cluster.sequencer_view(index)
            except grpc.RpcError:
                return False
            return role == "standby" and position >= goal

        try:
            goal = cluster.sequencer_view(self.leader())[1]
            wait_until(lambda: following(goal), 30, f"{name} to follow as a standby, at {goal} or further")
        except (TimeoutError, grpc.RpcError) as error:
            self.ledger.violation(f"{what}, {name} did not come back as a current standby: {error}")

    def fault_kill_leader(self, node: int, hold: float, variant: str) -> None:
        cluster, leader = self.cluster, self.leader()
        process = cluster.sequencers[leader]
        self.ledger.expected_down.add(process.name)
        process.kill()
        try:
            self.every_node_trades(f"after {process.name} (the leader) was SIGKILLed", time.monotonic(), hold)
        finally:
            cluster.start_sequencer(leader)
            self.ledger.expected_down.discard(process.name)
        self.standby_follows(leader, f"after {process.name} was restarted")

    def fault_stall_leader(self, node: int, hold: float, variant: str) -> None:
        cluster, leader = self.cluster, self.leader()
        process = cluster.sequencers[leader]
        process.signal(signal.SIGSTOP)
        try:
            self.every_node_trades(f"after {process.name} (the leader) was SIGSTOPped", time.monotonic(), hold)
        finally:
            process.signal(signal.SIGCONT)
        self.standby_follows(leader, f"after {process.name} was woken up")
        if "refused by the store" not in process.read_log():
            self.ledger.violation(f"{process.name} woke up after {hold:.1f}s (past its session's TTL) and no "
                                  "transaction of it was refused by Consul")

    def fault_kill_consul_server(self, node: int, hold: float, variant: str) -> None:
        consul = self.cluster.consul
        assert isinstance(consul, ConsulServers)
        wait_until(lambda: consul.leader_index() is not None, 30, "Consul to have a Raft leader")
        index = consul.leader_index()
        assert index is not None
        self.ledger.expected_down.add("consul")
        consul.servers[index].kill()
        try:
            self.every_node_trades(f"after Consul server {index + 1} (the Raft leader) was SIGKILLed",
                                   time.monotonic(), hold)
        finally:
            consul.servers[index].start()
            self.ledger.expected_down.discard("consul")
