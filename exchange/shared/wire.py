"""What every process of the cluster and the client agree on at the wire: service names, metadata headers,
which RPCs are the cluster's own, and the gRPC channel and server options (message sizes, keepalive).

Constants only (and ``split_host_port``): importing this loads no server code.
"""

from __future__ import annotations

import argparse
import os

# Consul service names (docs/architecture.md).
SEQUENCER_SERVICE = "sequencer"
PEER_SERVICE = "peer-server"
# The metadata that carries `Bearer <api key>` on order-entry calls.
AUTHORIZATION = "authorization"
# The metadata header that carries the cluster token on cluster-internal calls.
TOKEN_HEADER = "x-cluster-token"

# The cluster's own RPCs: they write or read what belongs to the cluster (the log, replication, snapshots), so
# a caller must present the cluster token (exchange.runtime.RequireClusterToken checks it, for every one of
# them, before any handler runs). Sequencer.GetSequence stays public: a market's current sequence number is
# no more than every book answer already shows (GetOrderBook's `known_seq`).
CLUSTER_ONLY_METHODS = frozenset({
    "/exchange.v1.ExchangeNode/BroadcastOrder",
    "/exchange.v1.ExchangeNode/BroadcastOrderStream",
    "/exchange.v1.ExchangeNode/GetSnapshot",
    "/exchange.v1.Sequencer/Sequence",
    "/exchange.v1.Sequencer/SequenceStream",
    "/exchange.v1.Sequencer/ReadLog",
})

# Requests far larger than any valid order are refused by grpc itself (RESOURCE_EXHAUSTED).
MAX_RECEIVE_BYTES = 1 * 1024 * 1024
MAX_SEND_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
# Keepalive: the cluster's channels ping every KEEPALIVE_MS, also while idle, so a dead peer or Sequencer is
# noticed within seconds. Servers must accept that rate: grpc's default (pings without data at most every
# 5 minutes, 2 strikes) answers a third idle ping with GOAWAY too_many_pings, which broke every idle
# long-lived stream. The server tolerates pings twice as often as the channels send them (grpc's keepalive
# guide: the server's minimum interval must not exceed the client's keepalive time).
KEEPALIVE_MS = int(os.environ.get("EXCHANGE_KEEPALIVE_MS", "10000"))
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    # Call metadata up to 16 KiB reaches the handlers (an oversized API key is UNAUTHENTICATED, saying why); more is
    # RESOURCE_EXHAUSTED. One limit, not grpc's soft one (8 KiB) below which nothing and above which a random
    # share of calls is refused.
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_SEND_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", max(1_000, KEEPALIVE_MS // 2)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {address!r}")
    return host, int(port)
