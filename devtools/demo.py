"""The demo cluster: `python -m devtools.demo up|down|status` (what `make cluster-up/-down/-status` run).

`up` starts Consul, the Sequencer and three nodes on fixed loopback ports (README, "Two commands") and
leaves them running: their pids are kept in `.cluster/state.json`, their logs in `.cluster/logs/`.
`up --ha` (`make cluster-up HA=1`) starts three Consul servers, two Sequencer replicas on the replicated log
and three nodes instead, and says which replica leads.
`down` stops them, `status` shows each node's sequence and checksum (and, in HA mode, each Sequencer replica's
role and position).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path

import grpc

from devtools.consul_acl import write_private
from devtools.consul_agent import ConsulServers
from devtools.local_cluster import DEMO_ACCOUNTS, ROOT, Cluster, pid_alive, wait_until
from devtools.prometheus import PrometheusServer
from exchange.cluster_common import parse_markets
from exchange.runtime import sync_channel
from exchange.shared.tls import TlsConfig, load_tls
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc

DEMO_DIR = ROOT / ".cluster"
# The fixed loopback ports: Consul's HTTP API, the Sequencer, the nodes, Prometheus, the web console
CONSUL_PORT, SEQUENCER_PORT, NODE_PORTS, PROMETHEUS_PORT, WEB_PORT = 18500, 50050, [50051, 50052, 50053], 19090, 18080
# HA mode: three Consul servers' HTTP APIs, two Sequencer replicas (the nodes' ports are the same)
HA_CONSUL_PORTS, HA_SEQUENCER_PORTS = [18500, 18501, 18502], [50050, 50054]
# Each process's Prometheus metrics (http://127.0.0.1:PORT/metrics)
METRICS_PORTS = {"sequencer": 19100, "sequencer-1": 19100, "sequencer-2": 19104, "node-1": 19101, "node-2": 19102,
                 "node-3": 19103}
STATE_FILE = DEMO_DIR / "state.json"


def _demo_cluster(tls: bool, ha: bool) -> Cluster:
    return Cluster(
        DEMO_DIR, nodes=3, node_ports=list(NODE_PORTS),
        secret=os.environ.get("EXCHANGE_CLUSTER_SECRET", "demo-secret"), tls=tls, ha=ha, rate_limit=None,
        accounts=DEMO_ACCOUNTS, metrics=True, metrics_ports=METRICS_PORTS,
        consul_port=None if ha else CONSUL_PORT, sequencer_port=None if ha else SEQUENCER_PORT,
        consul_ports=list(HA_CONSUL_PORTS) if ha else None, sequencer_ports=list(HA_SEQUENCER_PORTS) if ha else None,
    )


def cluster_up(tls: bool = False, ha: bool = False) -> int:
    if STATE_FILE.exists():
        print(f"a demo cluster seems to be running already ({STATE_FILE}); run `make cluster-down` first")
        return 1
    cluster = _demo_cluster(tls, ha)
    sequencers = ", ".join(cluster.sequencer_address_of(i) for i in range(len(cluster.sequencer_ports)))
    consul = (f"3 Consul servers on 127.0.0.1:{', :'.join(map(str, HA_CONSUL_PORTS))}" if ha
              else f"Consul on 127.0.0.1:{CONSUL_PORT}")
    print(f"starting {consul}, the Sequencer{' replicas' if ha else ''} on {sequencers}, nodes on "
          f"{', '.join(cluster.node_addresses)} ...", flush=True)
    try:
        cluster.start()
        web_url = cluster.start_web(WEB_PORT)
    except Exception:
        print(cluster.logs())
        cluster.stop()
        raise
    prometheus = PrometheusServer(DEMO_DIR, cluster.consul_address, port=PROMETHEUS_PORT, interval="5s",
                                  consul_token=cluster.consul_token("observer"))
    try:
        prometheus.start()
    except Exception:
        cluster.stop()
        raise
    consul_pids = cluster.consul.pids if isinstance(cluster.consul, ConsulServers) else [cluster.consul.pid]
    STATE_FILE.write_text(json.dumps({
        "consul_pids": consul_pids,
        "prometheus_pid": prometheus.pid,
        "processes": {"web": cluster.web.pid if cluster.web else None, **{p.name: p.pid for p in cluster.processes()}},
        "nodes": cluster.node_addresses,
        "sequencers": {cluster.sequencer_name(i): cluster.sequencer_address_of(i)
                       for i in range(len(cluster.sequencer_ports))},
        "markets": cluster.markets,
        "ha": ha,
        "tls_dir": str(cluster.client_tls_dir) if cluster.client_tls_dir else None,
        "metrics": {p.name: cluster.metrics_url(p.name) for p in cluster.processes()},
        "web": web_url,
    }, indent=2))
    grpcurl = Path(sys.executable).parent.relative_to(ROOT) / "grpcurl"
    cli = Path(sys.executable).parent.relative_to(ROOT) / "exchange-cli"
    tls_dir = cluster.client_tls_dir.relative_to(ROOT) if cluster.client_tls_dir else None
    if tls_dir is None:
        g, c = f"{grpcurl} -plaintext", str(cli)
        security = "plaintext (make cluster-up TLS=1 for mutual TLS)"
    else:
        g = f"{grpcurl} -cacert {tls_dir}/ca.pem -cert {tls_dir}/cert.pem -key {tls_dir}/key.pem"
        c = f"{cli} --tls-dir {tls_dir}"
        security = f"mutual TLS: the cluster's CA and certificates are in {tls_dir.parent}, a client's in {tls_dir}"
    keys = DEMO_DIR / "api-keys"
    write_private(keys, "".join(f"{name.upper()}={cluster.api_keys[name]}\n" for name in DEMO_ACCOUNTS))
    admin = DEMO_DIR / "admin.env"  # what `exchange-cli accounts` needs: the accounts role's token, the secret
    write_private(admin, "".join(f"{name}={value}\n" for name, value in cluster.admin_env().items()))
    node1, node2, node3 = cluster.node_addresses
    if ha:
        leader = cluster.leader_index()
        roles = "; ".join(f"{cluster.sequencer_name(i)} at {cluster.sequencer_address_of(i)} "
                          f"{'LEADS' if i == leader else 'stands by'}" for i in range(len(cluster.sequencer_ports)))
        print(f"\nHA mode: the log is replicated in Consul; Sequencer replicas: {roles}\n"
              f"(kill the leader, e.g. `kill -9 <pid from {STATE_FILE.name}>`, and a standby takes over; "
              "`make cluster-status` shows who leads)")
    resumed = {m.market: m.applied_seq for m in cluster.status(0).markets if m.applied_seq}
    if resumed:  # the walk-through below assumes empty books: say why alice's first order may meet her own
        where = ", ".join(f"{market} at sequence {seq}" for market, seq in resumed.items())
        print(f"\nresumed the log of an earlier demo run ({where}): its orders still rest; for empty books run "
              f"`make cluster-down`, remove {DEMO_DIR.relative_to(ROOT)}, and start again")
    alice, bob = '-H "authorization: Bearer $ALICE"', '-H "authorization: Bearer $BOB"'
    browser_note = "" if tls_dir is None else (
        f" (HTTPS with the demo's own CA: let the browser accept it, or import {tls_dir.parent}/ca.pem)")
    metrics = "\n".join(f"  {p.name:<12} {cluster.metrics_url(p.name)}" for p in cluster.processes())
    https = "" if tls_dir is None else f"; the services use its HTTPS API, {cluster.consul_address_for(0)}"
    print(f"""
cluster is up: Consul UI/API http://{cluster.consul_address}, logs in {DEMO_DIR / 'logs'}; {security}
Consul runs with ACLs (default deny: anonymous may only read services) and gossip encryption{https}; its tokens,
the management one too, are in {cluster.consul_security.state_file.relative_to(ROOT)} (docs/security.md)
Prometheus metrics of every process (registered in Consul: service meta metrics_port):
{metrics}
Prometheus ({prometheus.url}, its alerts at {prometheus.url}/classic/alerts) scrapes them every 5 s,
found through Consul (deploy/prometheus/); queries worth trying:
  sum by (market) (rate(exchange_orders_accepted_total[1m]))      orders accepted per second
  histogram_quantile(0.99, sum by (le) (rate(exchange_gate_round_trip_seconds_bucket[1m])))   gate p99, seconds
  exchange_book_checksum     each node's book checksum per market (equal where exchange_book_checksum_seq is)
accounts alice and bob, their API keys in {keys.relative_to(ROOT)} (more, with the accounts role's token and the
cluster secret: (set -a; . {admin.relative_to(ROOT)}; {cli} accounts add NAME))

web console: open {web_url}{browser_note}

try grpcurl (first: set -a; . {keys.relative_to(ROOT)}; set +a):
  {g} {node1} list
  {g} {alice} -d '{{"size": -10, "limit_price": 100}}' {node1} exchange.v1.ExchangeNode/CreateOrder
  {g} {bob} -d '{{"size": 15, "limit_price": 100}}' {node2} exchange.v1.ExchangeNode/CreateOrder
  {g} -d '{{"depth": 5}}' {node3} exchange.v1.ExchangeNode/GetOrderBook
  {g} {bob} {node1} exchange.v1.ExchangeNode/ListOrders
  {g} {node1} exchange.v1.ExchangeNode/GetStatus
  {g} -d '{{"limit": 5}}' {node2} exchange.v1.ExchangeNode/GetTrades
  {g} {node3} exchange.v1.ExchangeNode/GetTicker

or the CLI:
  {c} --api-key $ALICE --node {node1} buy 10 --price 100
  {c} --api-key $BOB --node {node2} sell 4 --price 100
  {c} --api-key $ALICE --node {node1} orders
  {c} --api-key $ALICE --node {node1} fills --watch
  {c} --node {node2} book --watch
  {c} status {node1} {node2} {node3}
  {c} --node {node3} trades --watch

stop everything with: make cluster-down""")
    return 0


def _exited(pid: int) -> bool:
    return not pid_alive(pid)


def cluster_down() -> int:
    if not STATE_FILE.exists():
        print("no demo cluster is running (no .cluster/state.json)")
        return 0
    state = json.loads(STATE_FILE.read_text())
    consul = [(f"consul-{n + 1}", pid) for n, pid in enumerate(state.get("consul_pids", [state.get("consul_pid")]))]
    consul.append(("prometheus", state.get("prometheus_pid")))
    # the services first (they deregister from Consul as they stop), then Consul
    for group in (list(state["processes"].items()), consul):
        for name, pid in group:
            if pid and pid_alive(pid):
                print(f"stopping {name} (pid {pid})")
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        for name, pid in group:
            if not pid:
                continue
            try:
                wait_until(partial(_exited, pid), 10, name)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
    STATE_FILE.unlink()
    print("demo cluster stopped; logs stay in", DEMO_DIR / "logs")
    return 0


def cluster_status(addresses: list[str] | None = None) -> int:
    from exchange.cli import print_cluster_status
    from exchange.client import Client, connection_of
    tls_dir = None
    if addresses is None:
        if not STATE_FILE.exists():
            print("no demo cluster is running; start one with `make cluster-up`")
            return 1
        state = json.loads(STATE_FILE.read_text())
        addresses, tls_dir = state["nodes"], state.get("tls_dir")
        if state.get("ha"):
            print_sequencer_replicas(state["sequencers"], [m.symbol for m in parse_markets(state["markets"])],
                                     load_tls(Path(tls_dir) if tls_dir else None))
    client = Client(addresses, connection=connection_of(load_tls(Path(tls_dir) if tls_dir else None)))
    return print_cluster_status(addresses, client)


def print_sequencer_replicas(replicas: dict[str, str], markets: list[str], tls: TlsConfig | None = None) -> None:
    """Each Sequencer replica's role and durable position per market (GetSequence), the leader first."""
    rows = []
    for name, address in replicas.items():
        try:
            with sync_channel(address, tls) as channel:
                stub = sequencer_pb2_grpc.SequencerStub(channel)
                answers = [stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=m), timeout=2) for m in markets]
            rows.append((answers[0].role != "leader", name, address, answers[0].role.upper(),
                         "  ".join(f"{a.market}@{a.current_seq}" for a in answers)))
        except grpc.RpcError as error:
            rows.append((True, name, address, "DOWN", error.code().name))
    print("Sequencer replicas (the log replicated in Consul):")
    for _, name, address, role, positions in sorted(rows):
        print(f"  {name:<12} {address:<16} {role:<8} {positions}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--tls", action="store_true", help="up: mutual TLS on every gRPC connection")
    parser.add_argument("--ha", action="store_true",
                        help="up: three Consul servers and two Sequencer replicas on the replicated log")
    args = parser.parse_args(argv)
    if args.command == "up":
        return cluster_up(tls=args.tls, ha=args.ha)
    return cluster_down() if args.command == "down" else cluster_status()


if __name__ == "__main__":
    sys.exit(main())
