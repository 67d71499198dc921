"""`exchange-node`: one exchange node, a full replica of every book of the cluster."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import socket
from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY

from discovery.consul import ConsulRegistry
from discovery.consul_kv import ConsulKV
from exchange.accounts import ACCOUNTS_PREFIX
from exchange.cluster_common import add_cluster_arguments, is_loopback, peer_token, refuse_development_secret
from exchange.cluster_config import agree_on_markets
from exchange.errors import ExchangeError
from exchange.grpc_metrics import enable_client_metrics
from exchange.metrics import LoopCollector, add_metrics_arguments, metrics_meta, serve_metrics
from exchange.node.auth import DEFAULT_BURST, DEFAULT_RATE, AccessControl, AccountRegistry, RateLimiter
from exchange.node.broadcast import PeerSet
from exchange.node.lifecycle import SERVING, STOPPING
from exchange.node.metrics import NodeGauges, counters
from exchange.node.replica import DEFAULT_JOURNAL_SIZE, Replica
from exchange.node.sequencer_link import Peers, Sequencer, SequencerLink
from exchange.node.sequencing import DEFAULT_GATE_DEPTH, DEFAULT_GATE_GATHER_S, MarketPipeline
from exchange.node.service import ExchangeNodeService
from exchange.node.snapshots import DEFAULT_EVERY, SnapshotStore, Snapshotter, adopt, position
from exchange.runtime import (
    GrpcServer,
    configure_logging,
    grpc_transport,
    log_fields,
    run,
    set_log_node,
    wait_for_signal,
)
from exchange.shared.tls import add_tls_argument, consul_endpoint, load_tls
from exchange.shared.wire import PEER_SERVICE, split_host_port
from exchange.v1 import exchange_pb2, exchange_pb2_grpc

log = logging.getLogger("node")
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exchange-node", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051", help="gRPC listen address host:port")
    parser.add_argument("--node-id", default=None, help="unique node id (default: node-<host>-<port>)")
    parser.add_argument("--max-retries", type=int, default=5,
                        help="times an order may be invalidated by a stale view before it is ABORTED")
    parser.add_argument("--gate-depth", type=int, default=DEFAULT_GATE_DEPTH,
                        help="gated requests per market in flight at once, pipelined on the gate stream (1: each "
                             "waits for the answer to the one before; deeper: less waiting, smaller batches, more "
                             "CPU per order)")
    parser.add_argument("--gate-gather-ms", type=float, default=DEFAULT_GATE_GATHER_S * 1000,
                        help="after a gated request is answered, wait up to this long for as many new orders as it "
                             "answered before the next request (the answered clients' next orders join it; 0: "
                             "send at once)")
    parser.add_argument("--sequencer", default=None,
                        help="fixed Sequencer address instead of Consul discovery (tests only)")
    parser.add_argument("--journal-size", type=int, default=DEFAULT_JOURNAL_SIZE,
                        help="the window: the last N commands per market whose results, events and finished "
                             "orders are kept (retries, StreamEvents/StreamOrders resume, GetOrder)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the node keeps its snapshots (default: .cluster/NODE_ID)")
    parser.add_argument("--snapshot-every", type=int, default=DEFAULT_EVERY,
                        help="applied entries (all markets) between two snapshots on disk; 0: only at a graceful "
                             "stop")
    parser.add_argument("--snapshot-threshold", type=int, default=10_000,
                        help="log entries behind at start (after the node's own snapshot) from which a peer's "
                             "snapshot is fetched first")
    parser.add_argument("--rate-limit", type=float, default=DEFAULT_RATE,
                        help="orders (and cancels, amends) per second per account")
    parser.add_argument("--rate-burst", type=float, default=DEFAULT_BURST, help="orders an account may send at once")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="development only: order entry without API keys (orders belong to no account); "
                             "refused beyond loopback")
    add_cluster_arguments(parser)
    add_tls_argument(parser)
    add_metrics_arguments(parser)
    args = parser.parse_args(argv)
    if args.gate_depth < 1:
        parser.error(f"--gate-depth must be at least 1 (1: one gated request a market at once), got {args.gate_depth}")
    if not 0 <= args.gate_gather_ms <= 1000:
        parser.error(f"--gate-gather-ms must be 0 to 1000, got {args.gate_gather_ms}")
    if args.journal_size < 1 or args.snapshot_every < 0:
        parser.error("--journal-size must be at least 1 and --snapshot-every at least 0")
    if not (0 < args.rate_limit < math.inf and 1 <= args.rate_burst < math.inf):
        parser.error(f"--rate-limit must be above 0 and --rate-burst at least 1, both finite (a burst below one "
                     f"order refuses every order), got {args.rate_limit:g} and {args.rate_burst:g}")
    if args.insecure_no_auth and not is_loopback(split_host_port(args.listen)[0]):
        parser.error("--insecure-no-auth is for development on loopback only: anyone could trade as anyone")
    return args


async def initial_catch_up(
    pipelines: dict[str, MarketPipeline], sequencer: Sequencer, replica: Replica, peers: Peers,
    snapshot_threshold: int, snapshotter: Snapshotter | None = None,
) -> None:
    """Brings the replica to the Sequencer's current position before the node serves: from the node's own
    latest snapshot, then from a peer's when the log left to replay is still long, then from the log. Waits
    for the Sequencer as long as it takes."""
    delay = 0.2
    while True:
        try:
            current = {market: await sequencer.current_seq(market) for market in pipelines}
            break
        except ExchangeError as error:
            log.warning("waiting for the Sequencer: %s", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    if snapshotter is not None:
        path = snapshotter.store.restore(replica, current)  # on the loop: nothing else may touch the replica
        if path is not None:
            snapshotter.saved_at = position(replica)
            counters["started_from_own_snapshot"] += 1
            log.info("started from its own snapshot %s at %s", path.name,
                     {m: replica.applied_seq(m) for m in pipelines})
    behind = sum(seq - replica.applied_seq(market) for market, seq in current.items())
    if behind >= snapshot_threshold:
        snapshot = await peers.fetch_snapshot()
        if snapshot is not None:
            try:
                if adopt(replica, snapshot):
                    counters["started_from_peer_snapshot"] += 1
                    log.info("restored from %s's snapshot at %s", snapshot.node_id,
                             {m: replica.applied_seq(m) for m in pipelines})
            except ValueError as error:
                log.warning("ignoring %s's snapshot: %s", snapshot.node_id, error)
    for market, pipeline in pipelines.items():
        while True:
            try:
                await pipeline.catch_up(current[market])
                log.info("%s: caught up to %d", market, replica.applied_seq(market),
                         extra=log_fields(market, replica.applied_seq(market)))
                break
            except ExchangeError as error:
                log.warning("%s: waiting for the Sequencer: %s", market, error, extra=log_fields(market))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def _snapshots_after(catch_up: asyncio.Future[None], snapshotter: Snapshotter) -> None:
    """Takes the periodic snapshots once the node is current (a snapshot is taken from a current replica)."""
    await catch_up
    await snapshotter.run()


async def _ready(catch_up: asyncio.Future[None], accounts: AccountRegistry | None) -> None:
    """The node may serve once it is current and, with accounts, once it has read the account registry."""
    await catch_up
    waited = False
    while accounts is not None and not accounts.status()[0]:
        if not waited:
            log.info("waiting for the account registry (Consul KV %s)", ACCOUNTS_PREFIX)
            waited = True
        await asyncio.sleep(0.05)


async def _go_live(service: ExchangeNodeService, pipelines: dict[str, MarketPipeline], server: GrpcServer,
                   register: Callable[[], None]) -> None:
    """Once the node is current: its pipelines take orders, it serves, and Consul lists it as a peer."""
    for pipeline in pipelines.values():
        pipeline.start()
    service.state = SERVING
    await server.set_serving(True)
    await asyncio.to_thread(register)
    log.info("node %s serving", service.node.node_id)


async def serve(args: argparse.Namespace) -> None:
    host, port = split_host_port(args.listen)
    secret = args.cluster_secret.encode()
    tls = load_tls(args.tls_dir)
    service_descriptor = exchange_pb2.DESCRIPTOR.services_by_name["ExchangeNode"]
    metrics_port = None if args.metrics_listen is None else serve_metrics(args.metrics_listen)
    if metrics_port is not None:
        enable_client_metrics()
    server = GrpcServer(args.listen, [service_descriptor], peer_token(secret), tls, metrics=metrics_port is not None)
    node_id = args.node_id or f"node-{socket.gethostname()}-{server.port}"
    set_log_node(node_id)
    consul_host, consul_port, consul_https = consul_endpoint(args.consul, args.tls_dir)
    registry = ConsulRegistry(consul_host, consul_port, grpc_tls=tls is not None, token=args.consul_token,
                              https=consul_https)
    kv = ConsulKV(consul_host, consul_port, token=args.consul_token, https=consul_https)
    markets = await asyncio.to_thread(agree_on_markets, kv, secret, args.markets)
    accounts = None
    if not args.insecure_no_auth:
        accounts = AccountRegistry(secret)
        accounts.follow(lambda on_change: kv.watch_prefix(ACCOUNTS_PREFIX, on_change))
    access = AccessControl(accounts, None if accounts is None else RateLimiter(args.rate_limit, args.rate_burst))
    replica = Replica(markets, journal_size=args.journal_size)
    snapshotter = Snapshotter(SnapshotStore(args.data_dir or Path(".cluster") / node_id), replica, node_id,
                              args.snapshot_every)
    sequencer = SequencerLink(secret, registry if args.sequencer is None else None, args.sequencer, tls=tls, leader=kv)
    peers = PeerSet(registry, node_id, secret, tls=tls)
    pipelines = {
        market: MarketPipeline(
            market, replica, sequencer, peers, node_id, max_retries=args.max_retries, gate_depth=args.gate_depth,
            gather_s=args.gate_gather_ms / 1000,
        )
        for market in replica.markets
    }
    service = ExchangeNodeService(node_id, replica, pipelines, sequencer, peers, secret, access)
    exchange_pb2_grpc.add_ExchangeNodeServicer_to_server(service, server.server)
    if metrics_port is not None:
        REGISTRY.register(LoopCollector(asyncio.get_running_loop(), NodeGauges(
            replica, pipelines, peers, lambda: service.state == SERVING)))
        log.info("metrics on http://%s:%d/metrics", split_host_port(args.metrics_listen)[0], metrics_port)
    await server.start()
    await server.set_serving(False)
    log.info("node %s listening on %s:%d (markets %s; %s); catching up", node_id, host, server.port,
             ", ".join(replica.markets), grpc_transport())
    stop = asyncio.ensure_future(wait_for_signal())
    catch_up = asyncio.ensure_future(
        initial_catch_up(pipelines, sequencer, replica, peers, args.snapshot_threshold, snapshotter)
    )
    snapshots = asyncio.ensure_future(_snapshots_after(catch_up, snapshotter))
    ready = asyncio.ensure_future(_ready(catch_up, accounts))
    await asyncio.wait([stop, ready], return_when=asyncio.FIRST_COMPLETED)
    # A catch-up that raised is a bug (what the Sequencer cannot answer yet is waited for): the replica is not the
    # log's, so the node must not serve; it stops and the process exits with the error.
    failed = ready.exception() if ready.done() else None
    if failed is not None:
        log.critical("the initial catch-up failed, the node will not serve: %r", failed)
    elif ready.done():
        await _go_live(service, pipelines, server, functools.partial(
            registry.register, PEER_SERVICE, node_id, host, server.port,
            {"node_id": node_id, **metrics_meta(metrics_port)},
        ))
    if failed is None:
        log.info("%s received: stopping", await stop)
    for task in (stop, ready, catch_up, snapshots):
        task.cancel()
    service.state = STOPPING
    await server.set_serving(False)
    await asyncio.to_thread(registry.deregister, node_id)
    await service.peer_rpcs.streams.end_all(f"node {node_id} is stopping")
    await server.stop(grace=2)
    for pipeline in pipelines.values():
        await pipeline.stop()
    if catch_up.done() and not catch_up.cancelled() and catch_up.exception() is None:  # else not the log's state
        snapshotter.save_now()
    await peers.close()
    await sequencer.close()
    registry.close()
    if accounts is not None:
        accounts.stop()
    if failed is not None:
        raise failed


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_development_secret(args.listen, args.cluster_secret)
    configure_logging("node", args.log_level, args.log_format)
    run(lambda: serve(args))


if __name__ == "__main__":
    main()
