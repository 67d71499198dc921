"""The cluster-wide configuration that every process must share, kept in Consul KV: the markets.

The markets are defined once for the whole cluster, at `exchange/config/markets` (the canonical spec of
`exchange.cluster.format_markets`). The first process started with `--markets` writes it; every later one
either takes it (no `--markets`) or must have been given exactly the same, or it refuses to start: a node
and the Sequencer that disagree on a market's tick or bounds would accept orders the other refuses, and
two nodes that disagree would diverge. Consul KV is Raft-replicated, the one store every process already
depends on, and the place the Sequencer's HA mode and the account registry keep their state too.
"""

from __future__ import annotations

import logging
import time

from discovery import DiscoveryError, KeyValue
from exchange.cluster import format_markets, parse_markets
from exchange.engine import MarketConfig

log = logging.getLogger(__name__)

MARKETS_KEY = "exchange/config/markets"


def agree_on_markets(kv: KeyValue, wanted: list[MarketConfig] | None, retry_s: float = 2.0) -> list[MarketConfig]:
    """The cluster's markets: the ones in Consul KV, written there first from `wanted` if there are none.
    SystemExit if `wanted` differs from what the cluster has; waits (logging why) while Consul is down, or
    while nobody has defined the markets and `wanted` is None."""
    while True:
        try:
            stored = kv.get(MARKETS_KEY)
            if stored is None and wanted is not None and kv.create(MARKETS_KEY, format_markets(wanted).encode()):
                log.info("defined the cluster's markets in Consul KV %s: %s", MARKETS_KEY, format_markets(wanted))
                return wanted
            if stored is not None:
                break
            if wanted is None:
                log.warning("waiting for the cluster's markets: Consul KV %s is empty (start a process with "
                            "--markets first)", MARKETS_KEY)
        except DiscoveryError as error:
            log.warning("waiting for Consul to read the cluster's markets: %s", error)
        time.sleep(retry_s)
    cluster = parse_markets(stored.decode())
    if wanted is not None and wanted != cluster:
        raise SystemExit(
            f"--markets {format_markets(wanted)} differs from the cluster's markets {format_markets(cluster)} "
            f"(Consul KV {MARKETS_KEY}): start every process with the same --markets, or none to take the "
            f"cluster's; to redefine the markets of a stopped cluster, delete that key"
        )
    return cluster
