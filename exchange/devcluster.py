"""A local cluster of real processes: a Consul dev agent, the Sequencer and N exchange nodes.

Used three ways, one code path: `make cluster-up/-down/-status` (the demo, processes outlive the
command and their pids are kept in `.cluster/state.json`), the integration tests (free ports, stopped
by the fixture), and fault tools that kill, stop and restart single processes.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from discovery.agent import ConsulDevAgent, free_port
from exchange.runtime import SERVICE_GRPC_ENV
from exchange.v1 import exchange_pb2, exchange_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".cluster"
DEMO_PORTS = {"consul": 18500, "sequencer": 50050, "nodes": [50051, 50052, 50053]}
DEFAULT_MARKETS = "BTC-USD,ETH-USD"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Polls `condition` until it holds; raises TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServiceProcess:
    """One Python service of the cluster, run as `python -m MODULE ARGS` with its output in a log file."""

    name: str
    module: str
    args: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    # Prepended to the command line, e.g. `ip netns exec NAME` (which execs: the pid stays the service's).
    prefix: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", self.module, *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=ROOT, env={**os.environ, **self.env}, start_new_session=True,
            )
        self.pid = self.popen.pid

    @property
    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        if self.pid is not None and self.running:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: health NOT_SERVING, deregister), SIGKILL if it does not exit in time."""
        if not self.running:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            wait_until(lambda: not self.running, timeout, f"{self.name} to exit")
        except TimeoutError:
            self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        wait_until(lambda: not self.running, 10, f"{self.name} to die")

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def read_log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


class NetNamespaces:
    """One network namespace per node, for real partitions (`Cluster(..., netns=True)`; needs root and `ip`).

    Layout: a bridge in the root namespace holds the gateway address of a private /24 (Consul's HTTP API
    and the Sequencer listen there, in the root namespace); node i runs in its own namespace with the
    address .(i+2), on a veth pair whose root end is a port of the bridge. Cutting node i off is
    `ip link set <its root end> down`; `tc netem` on both ends adds loss and delay. Every name (namespaces,
    links) carries a per-run id and the subnet is one not in use, so parallel runs do not collide.
    """

    def __init__(self, count: int) -> None:
        self.run_id = uuid.uuid4().hex[:6]
        self.count = count
        self.bridge = f"pxb{self.run_id}"
        self.namespaces = [f"px-{self.run_id}-n{i + 1}" for i in range(count)]
        self.root_ends = [f"pxv{self.run_id}r{i + 1}" for i in range(count)]  # <= 15 characters
        self.ns_ends = [f"pxv{self.run_id}n{i + 1}" for i in range(count)]
        self.network = _free_subnet()
        self.created = False
        self.impaired: dict[int, str] = {}

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why namespaces cannot be used here, or None if they can."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "the `ip` command (iproute2) is missing"
        name = f"px-probe-{uuid.uuid4().hex[:6]}"
        probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"`ip netns add` failed: {probe.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        return None

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def address(self, index: int) -> str:
        return str(self.network.network_address + 2 + index)

    def exec_prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index]]

    def create(self) -> None:
        self.created = True  # from the first command on, destroy() has something to clean up
        prefix = self.network.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.count):
            ns, root_end, ns_end = self.namespaces[i], self.root_ends[i], self.ns_ends[i]
            _ip("netns", "add", ns)
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", root_end, "master", self.bridge)
            _ip("link", "set", root_end, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, index: int) -> None:
        """Partitions node `index`: its link to the root namespace goes down."""
        _ip("link", "set", self.root_ends[index], "down")
        self.impaired[index] = "cut"

    def degrade(self, index: int, netem: list[str]) -> None:
        """Adds `tc netem` (e.g. ["delay", "100ms", "loss", "20%"]) to both ends of node `index`'s link."""
        _run(["tc", "qdisc", "replace", "dev", self.root_ends[index], "root", "netem", *netem])
        _run(["ip", "netns", "exec", self.namespaces[index],
              "tc", "qdisc", "replace", "dev", self.ns_ends[index], "root", "netem", *netem])
        self.impaired[index] = "netem " + " ".join(netem)

    def netem_available(self) -> bool:
        """Whether the kernel has `tc netem` (sch_netem), probed on the bridge (after create())."""
        probe = subprocess.run(["tc", "qdisc", "add", "dev", self.bridge, "root", "netem", "delay", "1ms"],
                               capture_output=True)
        _run(["tc", "qdisc", "del", "dev", self.bridge, "root"], check=False)
        return probe.returncode == 0

    def heal(self, index: int) -> None:
        """Undoes cut() and degrade() for node `index`."""
        _run(["tc", "qdisc", "del", "dev", self.root_ends[index], "root"], check=False)
        _run(["ip", "netns", "exec", self.namespaces[index],
              "tc", "qdisc", "del", "dev", self.ns_ends[index], "root"], check=False)
        _ip("link", "set", self.root_ends[index], "up")
        self.impaired.pop(index, None)

    def destroy(self) -> None:
        """Removes everything create() made (also a partial creation); never raises."""
        if not self.created:
            return
        for ns, root_end in zip(self.namespaces, self.root_ends, strict=True):
            _run(["ip", "link", "del", root_end], check=False)  # deletes its peer too
            _run(["ip", "netns", "del", ns], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        self.created = False


def _run(command: list[str], check: bool = True) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps no address or route of the root namespace."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = []
    for word in (routes + " " + addrs).split():
        with contextlib.suppress(ValueError):
            if word[0].isdigit() and "." in word:
                used.append(ipaddress.ip_network(word, strict=False))
    rng = uuid.uuid4().int
    for attempt in range(1000):
        value = (rng >> (attempt % 100)) + attempt
        candidate = ipaddress.ip_network(f"10.{value % 254 + 1}.{(value >> 8) % 254 + 1}.0/24")
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet for the node namespaces")


class Cluster:
    def __init__(
        self, workdir: Path, nodes: int = 3, markets: str = DEFAULT_MARKETS, consul_port: int | None = None,
        sequencer_port: int | None = None, node_ports: list[int] | None = None, max_retries: int = 5,
        secret: str = "test-cluster-secret", extra_node_args: list[str] | None = None, netns: bool = False,
    ) -> None:
        """`netns=True` runs every node in its own network namespace (see NetNamespaces), so that
        `partition()` can cut it off for real; Consul and the Sequencer stay in the root namespace."""
        self.workdir = workdir
        self.markets = markets
        self.secret = secret
        self.max_retries = max_retries
        self.extra_node_args = extra_node_args or []
        self.node_ports = node_ports or [free_port() for _ in range(nodes)]
        self.netns = NetNamespaces(len(self.node_ports)) if netns else None
        self.consul = ConsulDevAgent(
            data_dir=workdir / "consul", log_file=workdir / "logs" / "consul.log", http_port=consul_port,
            client_addr="127.0.0.1" if self.netns is None else f"127.0.0.1 {self.netns.gateway}",
        )
        self.sequencer_port = sequencer_port or free_port()
        self.sequencer: ServiceProcess | None = None
        self.nodes: list[ServiceProcess] = []

    # -- addresses --------------------------------------------------------------------------------

    @property
    def consul_address(self) -> str:
        return self.consul.address

    @property
    def sequencer_address(self) -> str:
        host = "127.0.0.1" if self.netns is None else self.netns.gateway
        return f"{host}:{self.sequencer_port}"

    def node_address(self, index: int) -> str:
        host = "127.0.0.1" if self.netns is None else self.netns.address(index)
        return f"{host}:{self.node_ports[index]}"

    @property
    def node_addresses(self) -> list[str]:
        return [self.node_address(i) for i in range(len(self.node_ports))]

    def node_id(self, index: int) -> str:
        return f"node-{index + 1}"

    def _env(self) -> dict[str, str]:
        transport = {name: os.environ.get(name, value) for name, value in SERVICE_GRPC_ENV.items()}
        return {"EXCHANGE_CLUSTER_SECRET": self.secret, "CONSUL_HTTP_ADDR": self.consul_address,
                "PYTHONUNBUFFERED": "1", **transport}

    # -- processes --------------------------------------------------------------------------------

    def make_sequencer(self) -> ServiceProcess:
        return ServiceProcess(
            "sequencer", "sequencer.main",
            ["--listen", self.sequencer_address, "--data-dir", str(self.workdir / "sequencer")],
            self.workdir / "logs" / "sequencer.log", self._env(),
        )

    def make_node(self, index: int) -> ServiceProcess:
        env, prefix = self._env(), []
        if self.netns is not None:  # the node reaches Consul through the bridge's address
            env["CONSUL_HTTP_ADDR"] = f"{self.netns.gateway}:{self.consul.http_port}"
            prefix = self.netns.exec_prefix(index)
        return ServiceProcess(
            self.node_id(index), "exchange.node.main",
            ["--listen", self.node_address(index), "--node-id", self.node_id(index), "--markets", self.markets,
             "--max-retries", str(self.max_retries), *self.extra_node_args],
            self.workdir / "logs" / f"{self.node_id(index)}.log", env, prefix,
        )

    def start(self, timeout: float = 60.0, nodes: int | None = None) -> None:
        """Starts Consul, the Sequencer and the first `nodes` nodes (all by default) and waits until they
        serve. If any of it fails, everything started is stopped again (the logs stay) and the error raised."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.netns is not None and not self.netns.created:
                self.netns.create()
            self.consul.start()
            self.start_sequencer()
            count = len(self.node_ports) if nodes is None else nodes
            self.nodes = [self.make_node(i) for i in range(len(self.node_ports))]
            for node in self.nodes[:count]:
                node.start()
            for index in range(count):
                self.wait_node_serving(index, timeout)
        except BaseException:
            self.stop()
            raise

    def start_sequencer(self) -> None:
        self.sequencer = self.make_sequencer()
        self.sequencer.start()
        wait_until(lambda: _serving(self.sequencer_address) or not self.sequencer.running, 30,
                   "the Sequencer to serve")
        if not self.sequencer.running:
            raise RuntimeError(f"the Sequencer exited:\n{self.sequencer.read_log()[-3000:]}")

    def start_node(self, index: int, timeout: float = 60.0, poll_s: float = 0.05) -> None:
        self.nodes[index] = self.make_node(index)
        self.nodes[index].start()
        self.wait_node_serving(index, timeout, poll_s)

    def wait_node_serving(self, index: int, timeout: float = 60.0, poll_s: float = 0.05) -> None:
        node = self.nodes[index]
        wait_until(lambda: _serving(self.node_address(index)) or not node.running, timeout,
                   f"{node.name} to serve", interval=poll_s)
        if not node.running:
            raise RuntimeError(f"{node.name} exited:\n{node.read_log()[-3000:]}")

    def processes(self) -> list[ServiceProcess]:
        return [p for p in [self.sequencer, *self.nodes] if p is not None]

    def stop(self) -> None:
        try:
            for process in reversed(self.processes()):
                process.stop()
            self.consul.stop()
        finally:
            if self.netns is not None:
                self.netns.destroy()

    def partition(self, index: int, netem: list[str] | None = None) -> None:
        """Cuts node `index` off the network (netns=True only), or with `netem` degrades its link instead."""
        if self.netns is None:
            raise RuntimeError("partitions need Cluster(..., netns=True)")
        if netem:
            self.netns.degrade(index, netem)
        else:
            self.netns.cut(index)

    def heal(self, index: int) -> None:
        if self.netns is None:
            raise RuntimeError("partitions need Cluster(..., netns=True)")
        self.netns.heal(index)

    def logs(self, tail: int = 4000) -> str:
        parts = [f"===== consul ({self.consul.log_file}) =====\n{self.consul.read_log()[-tail:]}"]
        for process in self.processes():
            parts.append(f"===== {process.name} ({process.log_file}) =====\n{process.read_log()[-tail:]}")
        return "\n".join(parts)

    # -- inspection -------------------------------------------------------------------------------

    def status(self, index: int, timeout: float = 5.0) -> exchange_pb2.GetStatusResponse:
        with grpc.insecure_channel(self.node_address(index)) as channel:
            return exchange_pb2_grpc.ExchangeNodeStub(channel).GetStatus(
                exchange_pb2.GetStatusRequest(), timeout=timeout
            )

    def wait_converged(self, timeout: float = 30.0, nodes: list[int] | None = None) -> dict[str, tuple[int, int]]:
        """Waits until the given nodes report the same (seq, checksum) for every market, lag 0."""
        indexes = nodes if nodes is not None else [i for i, n in enumerate(self.nodes) if n.running]
        views: list[dict[str, tuple[int, int]]] = []

        def converged() -> bool:
            views.clear()
            try:
                for index in indexes:
                    status = self.status(index)
                    if any(m.lag or m.buffered for m in status.markets) or status.state != "SERVING":
                        return False
                    views.append({m.market: (m.applied_seq, m.checksum) for m in status.markets})
            except grpc.RpcError:
                return False
            return all(view == views[0] for view in views)

        wait_until(converged, timeout, "the nodes to converge", interval=0.2)
        return views[0]


def _serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# -- the demo: make cluster-up / cluster-down / cluster-status ---------------------------------------

STATE_FILE = DEMO_DIR / "state.json"


def _demo_cluster() -> Cluster:
    return Cluster(
        DEMO_DIR, nodes=3, consul_port=DEMO_PORTS["consul"], sequencer_port=DEMO_PORTS["sequencer"],
        node_ports=list(DEMO_PORTS["nodes"]), secret=os.environ.get("EXCHANGE_CLUSTER_SECRET", "demo-secret"),
    )


def cluster_up() -> int:
    if STATE_FILE.exists():
        print(f"a demo cluster seems to be running already ({STATE_FILE}); run `make cluster-down` first")
        return 1
    cluster = _demo_cluster()
    print(f"starting Consul on 127.0.0.1:{DEMO_PORTS['consul']}, the Sequencer on {cluster.sequencer_address}, "
          f"nodes on {', '.join(cluster.node_addresses)} ...", flush=True)
    try:
        cluster.start()
    except Exception:
        print(cluster.logs())
        raise
    STATE_FILE.write_text(json.dumps({
        "consul_pid": cluster.consul.pid,
        "processes": {p.name: p.pid for p in cluster.processes()},
        "nodes": cluster.node_addresses,
    }, indent=2))
    grpcurl = Path(sys.executable).parent / "grpcurl"
    node1, node2 = cluster.node_addresses[0], cluster.node_addresses[1]
    print(f"""
cluster is up: Consul UI/API http://{cluster.consul_address}, logs in {DEMO_DIR / 'logs'}

try (grpcurl is {grpcurl}):
  {grpcurl} -plaintext {node1} list
  {grpcurl} -plaintext -d '{{"size": -10, "limit_price": 100}}' {node1} exchange.v1.ExchangeNode/CreateOrder
  {grpcurl} -plaintext -d '{{"size": 15, "limit_price": 100}}' {node2} exchange.v1.ExchangeNode/CreateOrder
  {grpcurl} -plaintext -d '{{"depth": 5}}' {cluster.node_addresses[2]} exchange.v1.ExchangeNode/GetOrderBook
  {grpcurl} -plaintext {node1} exchange.v1.ExchangeNode/GetStatus

or the CLI:
  .venv/bin/exchange-cli --node {node1} buy 10 --price 100
  .venv/bin/exchange-cli --node {node2} book
  .venv/bin/exchange-cli status {' '.join(cluster.node_addresses)}

stop everything with: make cluster-down""")
    return 0


def cluster_down() -> int:
    if not STATE_FILE.exists():
        print("no demo cluster is running (no .cluster/state.json)")
        return 0
    state = json.loads(STATE_FILE.read_text())
    # the services first (they deregister from Consul as they stop), then Consul
    for group in (list(state["processes"].items()), [("consul", state.get("consul_pid"))]):
        for name, pid in group:
            if pid and _pid_alive(pid):
                print(f"stopping {name} (pid {pid})")
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        for name, pid in group:
            if not pid:
                continue
            try:
                wait_until(lambda pid=pid: not _pid_alive(pid), 10, name)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
    STATE_FILE.unlink()
    print("demo cluster stopped; logs stay in", DEMO_DIR / "logs")
    return 0


def cluster_status(addresses: list[str] | None = None) -> int:
    from exchange.cli import print_cluster_status

    if addresses is None:
        if not STATE_FILE.exists():
            print("no demo cluster is running; start one with `make cluster-up`")
            return 1
        addresses = json.loads(STATE_FILE.read_text())["nodes"]
    return print_cluster_status(addresses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exchange.devcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    return {"up": cluster_up, "down": cluster_down, "status": cluster_status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
