"""The cluster-wide configuration that every process must share, kept in Consul KV: the markets.

The markets are defined once for the whole cluster, at `exchange/config/markets`: a signed record
(exchange.cluster_common.sign_record) of `{"markets": <the canonical spec of
exchange.cluster_common.format_markets>}`, so that only a holder of the cluster secret can define them. The first
process started with `--markets` whose Consul token may write the key (the Sequencer's role; docs/security.md)
writes it; every later one either takes it (no `--markets`) or must have been given exactly the same, or it refuses
to start: a node and the Sequencer that disagree on a market's tick or bounds would accept orders the other refuses,
and two nodes that disagree would diverge. Consul KV is Raft-replicated, the one store every process already depends
on, and the place the Sequencer's HA mode and the account registry keep their state too.
"""

from __future__ import annotations

import logging
import time

from discovery import AccessDenied, DiscoveryError, KeyValue
from exchange.cluster_common import format_markets, parse_markets, sign_record, verify_record
from exchange.shared.markets import MarketConfig

log = logging.getLogger(__name__)

MARKETS_KEY = "exchange/config/markets"


def markets_record(secret: bytes, markets: list[MarketConfig]) -> bytes:
    """What `exchange/config/markets` holds for `markets`."""
    return sign_record(secret, MARKETS_KEY, {"markets": format_markets(markets)})


def agree_on_markets(kv: KeyValue, secret: bytes, wanted: list[MarketConfig] | None,
                     retry_s: float = 2.0) -> list[MarketConfig]:
    """The cluster's markets: the ones in Consul KV, written there first from `wanted` if there are none.
    SystemExit if `wanted` differs from what the cluster has, or if the record there does not verify with the
    cluster secret; waits (logging why, as an error if Consul's ACLs refuse this process's token) while Consul
    is down, or while nobody has defined the markets and `wanted` is None."""
    while True:
        try:
            stored = kv.get(MARKETS_KEY)
            if stored is None and wanted is not None:
                try:
                    if kv.create(MARKETS_KEY, markets_record(secret, wanted)):
                        log.info("defined the cluster's markets in Consul KV %s: %s", MARKETS_KEY,
                                 format_markets(wanted))
                        return wanted
                except AccessDenied as error:  # a node's role reads the markets; the Sequencer's defines them
                    log.error("cannot define the cluster's markets (waiting for a process whose role may, the "
                              "Sequencer): %s", error)
            if stored is not None:
                break
            if wanted is None:
                log.warning("waiting for the cluster's markets: Consul KV %s is empty (start a process with "
                            "--markets first)", MARKETS_KEY)
        except AccessDenied as error:
            log.error("waiting to read the cluster's markets: %s", error)
        except DiscoveryError as error:
            log.warning("waiting for Consul to read the cluster's markets: %s", error)
        time.sleep(retry_s)
    record = verify_record(secret, MARKETS_KEY, stored)
    if record is None or not isinstance(record.get("markets"), str):
        raise SystemExit(
            f"the cluster's markets in Consul KV {MARKETS_KEY} do not verify with this process's cluster secret: "
            "they were written by a process with another --cluster-secret (EXCHANGE_CLUSTER_SECRET), by an older "
            "version (unsigned), or forged; give every process the same secret, and to redefine the markets of a "
            "stopped cluster delete that key"
        )
    cluster = parse_markets(str(record["markets"]))
    if wanted is not None and wanted != cluster:
        raise SystemExit(
            f"--markets {format_markets(wanted)} differs from the cluster's markets {format_markets(cluster)} "
            f"(Consul KV {MARKETS_KEY}): start every process with the same --markets, or none to take the "
            f"cluster's; to redefine the markets of a stopped cluster, delete that key"
        )
    return cluster
