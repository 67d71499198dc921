"""The process harness: a local cluster of real processes, a Consul dev agent, the Sequencer and N nodes; or, in
HA mode (`ha=True`), three Consul servers, Sequencer replicas on the replicated log (`--log consul`) and N nodes.

`Cluster` starts, stops, kills, partitions and inspects them; `ServiceProcess` is one service run as
`python -m MODULE` (`exchange.node.main`, `sequencer.main`) with its output in a log file; `wait_until`
polls a condition with a deadline; `serving` is the gRPC health probe. Used three ways, one code path:
the demo (devtools/demo.py: processes outlive the command), the integration tests and the bench (free
ports, stopped at the end), and the chaos checker, which kills, stops and restarts single processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devtools.auth_channels import with_metadata
from devtools.certs import make_cluster_tls
from devtools.consul_acl import ConsulSecurity
from devtools.consul_agent import ConsulDevAgent, ConsulServers
from devtools.netns import NetNamespaces
from devtools.ports import free_port
from discovery import Put
from discovery.consul_kv import ConsulKV
from exchange.accounts import ACCOUNTS_PREFIX, add_account, add_key
from exchange.cluster_common import parse_markets
from exchange.cluster_config import MARKETS_KEY, markets_record
from exchange.runtime import SERVICE_GRPC_ENV, sync_channel
from exchange.shared.tls import TlsConfig
from exchange.shared.wire import AUTHORIZATION
from exchange.v1 import exchange_pb2, exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MARKETS = "BTC-USD,ETH-USD"
# Every cluster has these accounts: alice and bob (the demo's), and traders for concurrent clients (an account's
# own orders never trade with each other, so a workload that should trade spreads over accounts).
DEMO_ACCOUNTS = ("alice", "bob")
TRADERS = tuple(f"trader-{number}" for number in range(1, 13))
DEFAULT_ACCOUNT = "alice"


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
        return self.pid is not None and pid_alive(self.pid)

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


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


class Cluster:
    """Consul, the Sequencer and N nodes of one cluster, with their logs and data under `workdir`."""

    def __init__(
        self, workdir: Path, nodes: int = 3, markets: str = DEFAULT_MARKETS, consul_port: int | None = None,
        sequencer_port: int | None = None, node_ports: list[int] | None = None, max_retries: int = 5,
        secret: str = "test-cluster-secret", extra_node_args: list[str] | None = None, netns: bool = False,
        tls: bool = False, rate_limit: float | None = 1e9, accounts: Sequence[str] = (*DEMO_ACCOUNTS, *TRADERS),
        ha: bool = False, sequencers: int = 2, sequencer_ports: list[int] | None = None,
        consul_ports: list[int] | None = None, extra_sequencer_args: list[str] | None = None,
        metrics: bool = False, metrics_ports: dict[str, int] | None = None,
    ) -> None:
        """`netns=True` runs every node in its own network namespace (see NetNamespaces), so that
        `partition()` can cut it off for real; Consul and the Sequencer stay in the root namespace.
        `tls=True` runs every gRPC connection with mutual TLS: a CA and one certificate per process (and one
        for clients, `client_tls_dir`) are made under `workdir/tls` (devtools/certs.py). `rate_limit`: orders
        per second per account (and its burst) on every node: unlimited for the tests and the bench by default,
        None for the nodes' own default (the demo).
        `ha=True`: three Consul servers (`consul_ports`: their HTTP ports) and `sequencers` Sequencer replicas
        on the replicated log; node i talks to Consul server i % 3, Sequencer replica i to a client agent of
        its own (as on a machine of its own in production: losing a Consul server is not losing its agent).
        `metrics=True`: every process serves Prometheus metrics (`--metrics-listen`) on a port of its own
        (`metrics_ports`: process name -> port, free ones for the others), kept across restarts."""
        self.workdir = workdir
        self.markets = markets
        self.secret = secret
        self.max_retries = max_retries
        self.ha = ha
        self.extra_node_args = extra_node_args or []
        self.extra_sequencer_args = extra_sequencer_args or []
        self.rate_limit = rate_limit
        self.accounts = tuple(accounts)
        self.metrics = metrics
        self.metrics_ports: dict[str, int] = dict(metrics_ports or {})
        self.node_ports = node_ports or [free_port() for _ in range(nodes)]
        self.netns = NetNamespaces(len(self.node_ports)) if netns else None
        self.tls_dir = workdir / "tls" if tls else None
        client_addr = "127.0.0.1" if self.netns is None else f"127.0.0.1 {self.netns.gateway}"
        consul_tls = None if self.tls_dir is None else self.tls_dir / "consul"
        # Consul with ACLs (default deny, a token per role) and gossip encryption: devtools/consul_acl.py
        self.consul_security = ConsulSecurity(workdir)
        config = self.consul_security.config_file
        self.consul: ConsulDevAgent | ConsulServers
        if ha:
            self.consul = ConsulServers(workdir, http_ports=consul_ports, client_addr=client_addr, tls_dir=consul_tls,
                                        clients=sequencers, config_file=config)
        else:
            self.consul = ConsulDevAgent(
                data_dir=workdir / "consul", log_file=workdir / "logs" / "consul.log", http_port=consul_port,
                client_addr=client_addr, tls_dir=consul_tls, config_file=config,
            )
        self._client_tls: TlsConfig | None = None
        self.api_keys: dict[str, str] = {}  # account -> its API key (made at start)
        self._account_records: dict[str, bytes] = {}
        count = sequencers if ha else 1
        self.sequencer_ports = sequencer_ports or [sequencer_port or free_port(), *(
            free_port() for _ in range(count - 1))]
        self.sequencers: list[ServiceProcess] = []
        self.nodes: list[ServiceProcess] = []
        self.web: ServiceProcess | None = None  # the web console, once start_web() ran
        self.web_port: int | None = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def consul_address(self) -> str:
        return self.consul.address

    def consul_address_for(self, index: int) -> str:
        """The Consul address node `index` talks to (`https://...` in TLS mode: Consul's API with the cluster's CA)."""
        consul = self.consul
        return consul.address_for(index) if isinstance(consul, ConsulServers) else consul.service_address

    @property
    def sequencer_port(self) -> int:
        return self.sequencer_ports[0]

    def sequencer_address_of(self, index: int) -> str:
        host = "127.0.0.1" if self.netns is None else self.netns.gateway
        return f"{host}:{self.sequencer_ports[index]}"

    @property
    def sequencer_address(self) -> str:
        """The Sequencer's address; in HA mode the leader's (the first running replica's while none leads)."""
        if self.ha:
            leader = self.leader_index()
            if leader is None:
                running = [i for i, process in enumerate(self.sequencers) if process.running]
                leader = running[0] if running else 0
            return self.sequencer_address_of(leader)
        return self.sequencer_address_of(0)

    @property
    def sequencer(self) -> ServiceProcess | None:
        """The Sequencer process; in HA mode the leading replica (None while none leads)."""
        if self.ha:
            leader = self.leader_index()
            return None if leader is None else self.sequencers[leader]
        return self.sequencers[0] if self.sequencers else None

    def node_address(self, index: int) -> str:
        host = "127.0.0.1" if self.netns is None else self.netns.address(index)
        return f"{host}:{self.node_ports[index]}"

    @property
    def node_addresses(self) -> list[str]:
        return [self.node_address(i) for i in range(len(self.node_ports))]

    def node_id(self, index: int) -> str:
        return f"node-{index + 1}"

    # -- TLS --------------------------------------------------------------------------------------

    def _make_certificates(self) -> None:
        if self.tls_dir is None:
            return
        gateway = "127.0.0.1" if self.netns is None else self.netns.gateway
        consul = ["127.0.0.1", "localhost", *([] if self.netns is None else [gateway])]  # its API, over HTTPS
        identities = {"consul": consul, "client": ["127.0.0.1", "localhost"]}
        identities.update({self.sequencer_name(i): [gateway, "localhost"] for i in range(len(self.sequencer_ports))})
        for index in range(len(self.node_ports)):
            identities[self.node_id(index)] = [self.node_address(index).rpartition(":")[0], "localhost"]
        make_cluster_tls(self.tls_dir, identities)

    def _rate_args(self) -> list[str]:
        limit = self.rate_limit
        return [] if limit is None else ["--rate-limit", f"{limit:g}", "--rate-burst", f"{limit:g}"]

    def _metrics_args(self, name: str, address: str) -> list[str]:
        """`--metrics-listen` on the host of the process's gRPC `address` (metrics=True only)."""
        if not self.metrics:
            return []
        port = self.metrics_ports.setdefault(name, free_port())
        return ["--metrics-listen", f"{address.rpartition(':')[0]}:{port}"]

    def metrics_url(self, name: str) -> str:
        """The `/metrics` URL of process `name` (node-1, sequencer, sequencer-1, ...)."""
        process = next(p for p in self.processes() if p.name == name)
        host = process.args[process.args.index("--metrics-listen") + 1].rpartition(":")[0]
        return f"http://{host}:{self.metrics_ports[name]}/metrics"

    def _tls_args(self, name: str) -> list[str]:
        return [] if self.tls_dir is None else ["--tls-dir", str(self.tls_dir / name)]

    @property
    def client_tls_dir(self) -> Path | None:
        """The `--tls-dir` of a client of this cluster (CLI, grpcurl's -cacert/-cert/-key), None in plaintext."""
        return None if self.tls_dir is None else self.tls_dir / "client"

    @property
    def client_tls(self) -> TlsConfig | None:
        if self._client_tls is None and self.client_tls_dir is not None:
            self._client_tls = TlsConfig.load(self.client_tls_dir)
        return self._client_tls

    def channel(self, address: str, account: str | None = DEFAULT_ACCOUNT) -> grpc.Channel:
        """A channel to one of the cluster's servers, as a client of the cluster (TLS when it runs with it), every
        call of which carries `account`'s API key (None: no key)."""
        return with_metadata(sync_channel(address, self.client_tls), self.auth_metadata(account))

    def auth_metadata(self, account: str | None = DEFAULT_ACCOUNT) -> tuple[tuple[str, str], ...]:
        """The `authorization` metadata of `account` (empty for None)."""
        return () if account is None else ((AUTHORIZATION, f"Bearer {self.api_keys[account]}"),)

    # -- accounts ---------------------------------------------------------------------------------

    def consul_token(self, role: str) -> str:
        """The Consul ACL token of `role`: node, sequencer, accounts, observer (devtools/consul_acl.py), or
        management."""
        security = self.consul_security
        return security.management_token if role == "management" else security.token(role)

    def kv(self, role: str = "accounts") -> ConsulKV:
        """Consul KV as `role` sees it (by default as the accounts administrator)."""
        host, port = self.consul_address.rsplit(":", 1)
        return ConsulKV(host, int(port), token=self.consul_token(role))

    def admin_env(self) -> dict[str, str]:
        """The environment of `exchange-cli accounts` for this cluster: its Consul, the accounts role's token and
        the cluster secret (which signs the records)."""
        return {"CONSUL_HTTP_ADDR": self.consul_address, "CONSUL_HTTP_TOKEN": self.consul_token("accounts"),
                "EXCHANGE_CLUSTER_SECRET": self.secret}

    def _secure_consul(self) -> None:
        """Consul's ACLs, bootstrapped if they were not, with every role's and every agent's token."""
        agents = self.consul.agents if isinstance(self.consul, ConsulServers) else [self.consul]
        self.consul_security.apply(self.consul.address, [(agent.address, agent.node_name) for agent in agents])

    def _make_accounts(self) -> None:
        """The cluster's accounts in the registry, once (a restarted cluster keeps its keys). An account that Consul
        kept from an earlier run (the HA demo's servers keep their data) gets a new key beside its old ones."""
        kv = self.kv()
        for account in self.accounts:
            if account not in self.api_keys:
                kept = kv.read(ACCOUNTS_PREFIX + account) is not None
                self.api_keys[account] = (add_key if kept else add_account)(kv, self.secret.encode(), account)
        self._account_records = kv.list(ACCOUNTS_PREFIX)

    @staticmethod
    def trader(number: int) -> str:
        """The account of concurrent client `number` (TRADERS, in turn)."""
        return TRADERS[number % len(TRADERS)]

    def add_account(self, name: str) -> str:
        """A further account (its key is kept in `api_keys` and restored with the others)."""
        self.api_keys[name] = add_account(self.kv(), self.secret.encode(), name)
        self._account_records = self.kv().list(ACCOUNTS_PREFIX)
        return self.api_keys[name]

    def restore_accounts(self) -> None:
        """Writes back what a dev agent restart lost (a real Consul keeps its data): the ACLs (the same tokens), the
        markets (a node may not define them: it would wait for the Sequencer, which is not restarting) and the
        registry, in one transaction: a node that read a part of it would refuse the keys not in it yet."""
        self._secure_consul()
        self.kv("sequencer").create(MARKETS_KEY, markets_record(self.secret.encode(), parse_markets(self.markets)))
        self.kv().transact([Put(key, value) for key, value in self._account_records.items()])

    def _env(self, role: str, index: int = 0) -> dict[str, str]:
        transport = {name: os.environ.get(name, value) for name, value in SERVICE_GRPC_ENV.items()}
        return {"EXCHANGE_CLUSTER_SECRET": self.secret, "CONSUL_HTTP_ADDR": self.consul_address_for(index),
                "CONSUL_HTTP_TOKEN": self.consul_token(role), "PYTHONUNBUFFERED": "1", **transport}

    # -- processes --------------------------------------------------------------------------------

    def sequencer_name(self, index: int) -> str:
        return f"sequencer-{index + 1}" if self.ha else "sequencer"

    def make_sequencer(self, index: int = 0) -> ServiceProcess:
        name = self.sequencer_name(index)
        env, ha = self._env("sequencer"), []
        if isinstance(self.consul, ConsulServers):  # HA: the replica's own Consul client agent
            env["CONSUL_HTTP_ADDR"] = self.consul.client_address(index)
            ha = ["--log", "consul", "--id", name]
        return ServiceProcess(
            name, "sequencer.main",
            ["--listen", self.sequencer_address_of(index), "--data-dir", str(self.workdir / name),
             "--markets", self.markets, *ha, *self._tls_args(name),
             *self._metrics_args(name, self.sequencer_address_of(index)), *self.extra_sequencer_args],
            self.workdir / "logs" / f"{name}.log", env,
        )

    def make_node(self, index: int) -> ServiceProcess:
        env, prefix = self._env("node", index), []
        if self.netns is not None:  # the node reaches Consul through the bridge's address
            scheme, _, address = self.consul_address_for(index).rpartition("://")
            env["CONSUL_HTTP_ADDR"] = f"{scheme}{'://' if scheme else ''}{self.netns.gateway}:" \
                                      f"{address.rpartition(':')[2]}"
            prefix = self.netns.exec_prefix(index)
        return ServiceProcess(
            self.node_id(index), "exchange.node.main",
            ["--listen", self.node_address(index), "--node-id", self.node_id(index), "--markets", self.markets,
             "--max-retries", str(self.max_retries), "--data-dir", str(self.workdir / self.node_id(index)),
             *self._tls_args(self.node_id(index)), *self._rate_args(),
             *self._metrics_args(self.node_id(index), self.node_address(index)), *self.extra_node_args],
            self.workdir / "logs" / f"{self.node_id(index)}.log", env, prefix,
        )

    def start(self, timeout: float = 60.0, nodes: int | None = None) -> None:
        """Starts Consul, the Sequencer and the first `nodes` nodes (all by default) and waits until they
        serve. If any of it fails, everything started is stopped again (the logs stay) and the error raised."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.netns is not None and not self.netns.created:
                self.netns.create()
            self._make_certificates()
            self.consul_security.write_config()
            self.consul.start()
            self._secure_consul()
            self._make_accounts()
            self.sequencers = [self.make_sequencer(i) for i in range(len(self.sequencer_ports))]
            for index in range(len(self.sequencers)):
                self.start_sequencer(index)
            if self.ha:
                wait_until(lambda: self.leader_index() is not None, timeout, "a Sequencer replica to lead")
            count = len(self.node_ports) if nodes is None else nodes
            self.nodes = [self.make_node(i) for i in range(len(self.node_ports))]
            for node in self.nodes[:count]:
                node.start()
            for index in range(count):
                self.wait_node_serving(index, timeout)
        except BaseException:
            self.stop()
            raise

    def start_sequencer(self, index: int = 0) -> None:
        """(Re)starts Sequencer replica `index` (the Sequencer) and waits until it serves."""
        process = self.make_sequencer(index)
        if index < len(self.sequencers):
            self.sequencers[index] = process
        else:
            self.sequencers.append(process)
        process.start()
        address = self.sequencer_address_of(index)
        wait_until(lambda: serving(address, self.client_tls) or not process.running, 30, f"{process.name} to serve")
        if not process.running:
            raise RuntimeError(f"{process.name} exited:\n{process.read_log()[-3000:]}")

    def sequencer_view(self, index: int, market: str | None = None, timeout: float = 2.0) -> tuple[str, int]:
        """Replica `index`'s role ("leader" or "standby") and durable position in `market` (the first one)."""
        market = market or parse_markets(self.markets)[0].symbol
        with self.channel(self.sequencer_address_of(index)) as channel:
            answer = sequencer_pb2_grpc.SequencerStub(channel).GetSequence(
                sequencer_pb2.GetSequenceRequest(market=market), timeout=timeout)
        return answer.role, answer.current_seq

    def leader_index(self) -> int | None:
        """The replica that says it leads (in HA mode; the embedded Sequencer always does), None if none does."""
        for index, process in enumerate(self.sequencers):
            if not process.running:
                continue
            try:
                if self.sequencer_view(index, timeout=1.0)[0] == "leader":
                    return index
            except grpc.RpcError:
                continue
        return None

    def start_node(self, index: int, timeout: float = 60.0, poll_s: float = 0.05) -> None:
        self.nodes[index] = self.make_node(index)
        self.nodes[index].start()
        self.wait_node_serving(index, timeout, poll_s)

    def wait_node_serving(self, index: int, timeout: float = 60.0, poll_s: float = 0.05) -> None:
        node = self.nodes[index]
        wait_until(lambda: serving(self.node_address(index), self.client_tls) or not node.running, timeout,
                   f"{node.name} to serve", interval=poll_s)
        if not node.running:
            raise RuntimeError(f"{node.name} exited:\n{node.read_log()[-3000:]}")

    def processes(self) -> list[ServiceProcess]:
        """The cluster's services (the web console, a client of it, is `web`)."""
        return [*self.sequencers, *self.nodes]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def start_web(self, port: int | None = None, timeout: float = 30.0) -> str:
        """(Re)starts the web console (exchange-web) on `port` (the last one, else a free one) and waits until it
        answers; returns its URL. It is a client of the cluster: Consul (the observer's token: it reads services) and
        the client's TLS files, no secret."""
        self.web_port = port or self.web_port or free_port()
        tls = [] if self.client_tls_dir is None else ["--tls-dir", str(self.client_tls_dir)]
        transport = {name: os.environ.get(name, value) for name, value in SERVICE_GRPC_ENV.items()}
        args = ["--listen", f"127.0.0.1:{self.web_port}", "--consul", self.consul_address_for(0), *tls]
        env = {"CONSUL_HTTP_TOKEN": self.consul_token("observer"), "PYTHONUNBUFFERED": "1", **transport}
        self.web = ServiceProcess("web", "exchange.web.main", args, self.workdir / "logs" / "web.log", env)
        self.web.start()
        web = self.web
        url = self.web_url if self.client_tls_dir is None else self.web_url.replace("http:", "https:")
        wait_until(lambda: web_answers(url) or not web.running, timeout, "the web console to answer")
        if not web.running:
            raise RuntimeError(f"exchange-web exited:\n{web.read_log()[-3000:]}")
        return url

    def stop(self) -> None:
        try:
            for process in [*([self.web] if self.web is not None else []), *reversed(self.processes())]:
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

    def dump_tasks(self) -> None:
        """Asks every running service to log its asyncio tasks' stacks (SIGUSR1), for a failed test's logs."""
        for process in self.processes():
            if process.running:
                process.signal(signal.SIGUSR1)
        time.sleep(0.5)

    def logs(self, tail: int = 4000) -> str:
        servers = self.consul.agents if isinstance(self.consul, ConsulServers) else [self.consul]
        parts = [f"===== consul ({server.log_file}) =====\n{server.read_log()[-tail:]}" for server in servers]
        for process in [*self.processes(), *([self.web] if self.web is not None else [])]:
            parts.append(f"===== {process.name} ({process.log_file}) =====\n{process.read_log()[-tail:]}")
        return "\n".join(parts)

    # -- inspection -------------------------------------------------------------------------------

    def status(self, index: int, timeout: float = 5.0) -> exchange_pb2.GetStatusResponse:
        with self.channel(self.node_address(index)) as channel:
            return exchange_pb2_grpc.ExchangeNodeStub(channel).GetStatus(
                exchange_pb2.GetStatusRequest(), timeout=timeout
            )

    def sequencer_positions(self) -> dict[str, int] | None:
        """Each market's durable position at the leading Sequencer, None if none answers."""
        leader = self.leader_index()
        if leader is None:
            return None
        try:
            return {market.symbol: self.sequencer_view(leader, market.symbol)[1]
                    for market in parse_markets(self.markets)}
        except grpc.RpcError:
            return None

    def wait_converged(self, timeout: float = 30.0, nodes: list[int] | None = None) -> dict[str, tuple[int, int]]:
        """Waits until the given nodes report the same (seq, checksum) for every market, lag 0, nothing buffered
        and no command of theirs still on its way to the log, at the leading Sequencer's position (when one
        answers): a node may still place a command its client gave up on (after a partition, say)."""
        indexes = nodes if nodes is not None else [i for i, n in enumerate(self.nodes) if n.running]
        views: list[dict[str, tuple[int, int]]] = []

        def converged() -> bool:
            views.clear()
            try:
                for index in indexes:
                    status = self.status(index)
                    if any(m.lag or m.buffered or m.pending for m in status.markets) or status.state != "SERVING":
                        return False
                    views.append({m.market: (m.applied_seq, m.checksum) for m in status.markets})
            except grpc.RpcError:
                return False
            if not all(view == views[0] for view in views):
                return False
            positions = self.sequencer_positions()
            return positions is None or all(views[0][market][0] == seq for market, seq in positions.items())

        wait_until(converged, timeout, "the nodes to converge", interval=0.2)
        return views[0]


def web_answers(url: str) -> bool:
    """Whether the web console at `url` answers (its certificate is not checked: a probe, not a client)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url + "api/state", timeout=2, context=context) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def serving(address: str, tls: TlsConfig | None = None) -> bool:
    """Whether the gRPC server at `address` answers its health check with SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with sync_channel(address, tls) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
