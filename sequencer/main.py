"""`exchange-sequencer`: runs the Sequencer and registers it in Consul as `sequencer`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from discovery.consul import ConsulKV, ConsulRegistry
from exchange.cluster import (
    SEQUENCER_SERVICE,
    add_cluster_arguments,
    peer_token,
    refuse_development_secret,
    split_host_port,
)
from exchange.cluster_config import agree_on_markets
from exchange.runtime import GrpcServer, configure_logging, grpc_transport, run, wait_for_signal
from exchange.tls import add_tls_argument, load_tls
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc
from sequencer.service import SequencerService
from sequencer.store import LogStore

log = logging.getLogger("sequencer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exchange-sequencer", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50050", help="gRPC listen address host:port")
    parser.add_argument("--data-dir", type=Path, default=Path(".cluster/sequencer"), help="where the log lives")
    parser.add_argument("--id", default="sequencer-1", help="Consul service id")
    parser.add_argument("--stats-s", type=float, default=10.0, help="seconds between the gate figures in the log")
    add_cluster_arguments(parser)
    add_tls_argument(parser)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    consul_host, consul_port = split_host_port(args.consul)
    markets = await asyncio.to_thread(agree_on_markets, ConsulKV(consul_host, consul_port), args.markets)
    store = LogStore(args.data_dir / "log.sqlite3")
    store.start(asyncio.get_running_loop())
    service = SequencerService(store, args.cluster_secret.encode(), markets)
    token = peer_token(args.cluster_secret.encode())
    tls = load_tls(args.tls_dir)
    server = GrpcServer(args.listen, [sequencer_pb2.DESCRIPTOR.services_by_name["Sequencer"]], token, tls)
    sequencer_pb2_grpc.add_SequencerServicer_to_server(service, server.server)
    await server.start()
    await server.set_serving(True)
    reporter = asyncio.create_task(service.report(args.stats_s))
    host, _ = split_host_port(args.listen)
    registry = ConsulRegistry(consul_host, consul_port, grpc_tls=tls is not None)
    await asyncio.to_thread(registry.register, SEQUENCER_SERVICE, args.id, host, server.port, {"role": "sequencer"})
    positions = ", ".join(f"{m.market}@{m.current}" for m in service.markets.values())
    log.info("sequencer %s listening on %s:%d; log %s; markets %s; %s", args.id, host, server.port,
             store.path, positions, grpc_transport())
    signal_name = await wait_for_signal()
    log.info("%s received: stopping", signal_name)
    reporter.cancel()
    await server.set_serving(False)
    await asyncio.to_thread(registry.deregister, args.id)
    registry.close()
    await service.streams.end_all(f"the Sequencer {args.id} is stopping")
    await server.stop(grace=2)
    store.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_development_secret(args.listen, args.cluster_secret)
    configure_logging("sequencer", args.log_level)
    run(lambda: serve(args))


if __name__ == "__main__":
    main()
