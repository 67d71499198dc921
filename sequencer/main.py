"""`exchange-sequencer`: runs the Sequencer and registers it in Consul as `sequencer`.

`--log sqlite` (the default): the embedded log, one Sequencer on one machine. `--log consul`: one replica of
the Sequencer in HA mode (sequencer/replicated.py); start two or more, each with its own --id and --data-dir.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from discovery.consul import ConsulRegistry, session_checks
from discovery.consul_kv import ConsulKV
from exchange.cluster_common import (
    LeaderRecord,
    add_cluster_arguments,
    peer_token,
    refuse_development_secret,
    token_metadata,
)
from exchange.cluster_config import agree_on_markets
from exchange.dedup import DEFAULT_WINDOW, dedup_key
from exchange.entry_signing import entry_is_authentic
from exchange.metrics import LoopCollector, add_metrics_arguments, metrics_meta, serve_metrics
from exchange.runtime import (
    GrpcServer,
    configure_logging,
    grpc_transport,
    run,
    set_log_node,
    sync_channel,
    wait_for_signal,
)
from exchange.shared.tls import TlsConfig, add_tls_argument, consul_endpoint, load_tls
from exchange.shared.wire import SEQUENCER_SERVICE, split_host_port
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc, types_pb2
from sequencer.ha.records import DEFAULT_TAIL_ENTRIES, PeerReader
from sequencer.log import LogBackend, StoredEntry
from sequencer.replicated import ReplicatedLog
from sequencer.service import SequencerService
from sequencer.store import LogStore

log = logging.getLogger("sequencer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exchange-sequencer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:50050", help="gRPC listen address host:port")
    parser.add_argument("--data-dir", type=Path, default=Path(".cluster/sequencer"),
                        help="where the log (sqlite) or this replica's archive of it (consul) lives")
    parser.add_argument("--id", default="sequencer-1", help="Consul service id (unique per replica)")
    parser.add_argument("--log", choices=["sqlite", "consul"], default="sqlite",
                        help="sqlite: the embedded log (one Sequencer); consul: the log replicated in Consul, "
                             "several replicas, one leader (HA)")
    parser.add_argument("--dedup-window", type=int, default=DEFAULT_WINDOW,
                        help="a retried client_order_id is recognised within the last N commands of its market")
    parser.add_argument("--consul-tail", type=int, default=DEFAULT_TAIL_ENTRIES,
                        help="consul: entries per market kept in Consul KV (older ones live in each replica's archive)")
    parser.add_argument("--session-ttl-s", type=float, default=10.0,
                        help="consul: the leader session's TTL (Consul's minimum is 10 s; renewed every TTL/4)")
    parser.add_argument("--lock-delay-s", type=float, default=1.0,
                        help="consul: how long a lost leader's lock cannot be taken (Consul's default is 15 s)")
    parser.add_argument("--stats-s", type=float, default=10.0, help="seconds between the gate figures in the log")
    add_cluster_arguments(parser)
    add_tls_argument(parser)
    add_metrics_arguments(parser)
    return parser.parse_args(argv)


def peer_reader(registry: ConsulRegistry, own_id: str, secret: bytes, tls: TlsConfig | None) -> PeerReader:
    """Reads a range of the log from another replica's archive (ReadLog), every entry's signature checked."""
    metadata = token_metadata(secret)

    def read(market: str, from_seq: int, to_seq: int) -> Iterator[list[StoredEntry]]:
        wanted = from_seq  # the next entry to read: a replica that holds fewer leaves the rest to the next one
        for instance in registry.healthy(SEQUENCER_SERVICE):
            if instance.instance_id == own_id:
                continue
            request = sequencer_pb2.ReadLogRequest(market=market, from_seq=wanted, to_seq=to_seq)
            try:
                with sync_channel(instance.target, tls) as channel:
                    stub = sequencer_pb2_grpc.SequencerStub(channel)
                    for batch in stub.ReadLog(request, metadata=metadata, timeout=300):
                        if not all(entry_is_authentic(secret, e) for e in batch.entries):
                            raise ValueError(f"{instance.instance_id} sent an entry that is not the log's")
                        parse = types_pb2.Command.FromString
                        entries = [StoredEntry(e.market, e.seq, dedup_key(parse(e.command)), e.command, e.mac)
                                   for e in batch.entries]
                        if entries:
                            wanted = entries[-1].seq + 1
                            yield entries
                if wanted > to_seq:
                    return
                log.info("%s: %s holds entries up to %d only: asking another replica for the rest", market,
                         instance.instance_id, wanted - 1)
            except (grpc.RpcError, ValueError) as error:
                log.warning("reading %s %d..%d from %s failed: %s", market, from_seq, to_seq, instance.instance_id,
                            error)

    return read


async def serve(args: argparse.Namespace) -> None:
    consul_host, consul_port, consul_https = consul_endpoint(args.consul, args.tls_dir)
    kv = ConsulKV(consul_host, consul_port, token=args.consul_token, https=consul_https)
    secret = args.cluster_secret.encode()
    markets = await asyncio.to_thread(agree_on_markets, kv, secret, args.markets)
    tls = load_tls(args.tls_dir)
    host, _ = split_host_port(args.listen)
    # the check is in the HA leader's session: a stalled replica fails it (and loses the lock) within seconds
    registry = ConsulRegistry(consul_host, consul_port, grpc_tls=tls is not None, token=args.consul_token,
                              check_timeout="2s", https=consul_https)
    metrics_port = None if args.metrics_listen is None else serve_metrics(args.metrics_listen)
    server = GrpcServer(args.listen, [sequencer_pb2.DESCRIPTOR.services_by_name["Sequencer"]], peer_token(secret), tls,
                        metrics=metrics_port is not None)
    store: LogBackend
    if args.log == "consul":
        store = ReplicatedLog(
            kv, LogStore(args.data_dir / "archive.sqlite3", synchronous="NORMAL"), [m.symbol for m in markets],
            LeaderRecord(args.id, f"{host}:{server.port}"), session_checks(args.id), secret=secret,
            tail_entries=args.consul_tail,
            session_ttl_s=args.session_ttl_s, lock_delay_s=args.lock_delay_s,
            read_peer=peer_reader(registry, args.id, secret, tls),
        )
    else:
        store = LogStore(args.data_dir / "log.sqlite3")
    service = SequencerService(store, secret, markets, dedup_window=args.dedup_window)
    sequencer_pb2_grpc.add_SequencerServicer_to_server(service, server.server)
    if metrics_port is not None:
        REGISTRY.register(LoopCollector(asyncio.get_running_loop(), service.gauges))
        log.info("metrics on http://%s:%d/metrics", split_host_port(args.metrics_listen)[0], metrics_port)
    if store.leads_at_start:  # the embedded log numbers from the first request: it must be ready to write by then
        store.start(asyncio.get_running_loop(), service)
    await server.start()
    await server.set_serving(True)
    reporter = asyncio.create_task(service.report(args.stats_s))
    await asyncio.to_thread(registry.register, SEQUENCER_SERVICE, args.id, host, server.port,
                            {"role": "sequencer", "log": args.log, **metrics_meta(metrics_port)})
    if not store.leads_at_start:  # a replica contends for the lead once it is registered
        store.start(asyncio.get_running_loop(), service)
    positions = ", ".join(f"{m.market}@{m.current}" for m in service.markets.values())
    log.info("sequencer %s listening on %s:%d; %s; markets %s; %s", args.id, host, server.port, store.describe(),
             positions, grpc_transport())
    signal_name = await wait_for_signal()
    log.info("%s received: stopping", signal_name)
    reporter.cancel()
    await server.set_serving(False)
    if isinstance(store, ReplicatedLog):  # a leader lets its writes settle and releases the lock at once
        await asyncio.to_thread(store.resign)
    await asyncio.to_thread(registry.deregister, args.id)
    registry.close()
    await service.streams.end_all(f"the Sequencer {args.id} is stopping")
    await server.stop(grace=2)
    await asyncio.to_thread(store.close)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_development_secret(args.listen, args.cluster_secret)
    configure_logging("sequencer", args.log_level, args.log_format)
    set_log_node(args.id)
    run(lambda: serve(args))


if __name__ == "__main__":
    main()
