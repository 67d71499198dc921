"""Settings shared by the processes of a cluster (command-line flags with environment defaults)."""

from __future__ import annotations

import argparse
import os

DEFAULT_SECRET = "p2p-exchange-dev-secret"


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consul",
        default=os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
        help="Consul agent HTTP address host:port (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)",
    )
    parser.add_argument(
        "--cluster-secret",
        default=os.environ.get("EXCHANGE_CLUSTER_SECRET", DEFAULT_SECRET),
        help="shared secret: authenticates log entries and peer calls (env EXCHANGE_CLUSTER_SECRET)",
    )
    parser.add_argument("--log-level", default=os.environ.get("EXCHANGE_LOG_LEVEL", "INFO"))


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {address!r}")
    return host, int(port)
