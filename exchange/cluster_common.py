"""What every process of a cluster shares: service names, the cluster token, the market spec, common flags.

Both services (the node and the Sequencer) and the tools import this module; neither service imports the
other's package. It holds no state and does no I/O.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

from exchange.shared.markets import MarketConfig
from exchange.shared.wire import TOKEN_HEADER, split_host_port

# HA mode (the replicated log): the Sequencer replicas' lock in Consul KV. Its holder is the leader, the only
# replica that numbers commands; the value is the holder's LeaderRecord, how nodes find it.
SEQUENCER_LEADER_KEY = "exchange/sequencer/leader"


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """Which Sequencer replica leads: its Consul service id and gRPC address."""

    id: str
    address: str

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "address": self.address}).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> LeaderRecord | None:
        """None for no value or an empty one (the lock was released) or one that is not a record."""
        try:
            data = json.loads(value or b"null")
            return cls(str(data["id"]), str(data["address"])) if isinstance(data, dict) else None
        except (ValueError, KeyError, RecursionError):
            return None


# The built-in development secret: fine on loopback, refused anywhere else.
DEFAULT_SECRET = "p2p-exchange-dev-secret"
MIN_SECRET_LENGTH = 16  # beyond loopback


MARKET_FIELDS = ("tick_size", "lot_size", "min_price", "max_price", "min_size", "max_size")


def peer_token(secret: bytes) -> str:
    """What a cluster process presents in `x-cluster-token`: derived from the secret, never the secret itself."""
    return hashlib.sha256(b"p2p-exchange peer token\x00" + secret).hexdigest()


def _registry_key(secret: bytes) -> bytes:
    """The key registry records are signed with: derived from the secret, apart from the log's and the token's."""
    return hashlib.sha256(b"p2p-exchange registry record key\x00" + secret).digest()


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def record_mac(secret: bytes, key: str, fields: dict[str, object]) -> str:
    """HMAC-SHA256 (hex) of a registry record: its Consul KV key and its fields (canonical JSON), so a record
    proves it was written by a holder of the cluster secret, for that key (it cannot be copied to another)."""
    return hmac.new(_registry_key(secret), key.encode() + b"\x00" + _canonical(fields), hashlib.sha256).hexdigest()


def sign_record(secret: bytes, key: str, fields: dict[str, object]) -> bytes:
    """A registry record (account, markets) as stored at `key`: its fields and a `mac` of them (docs/security.md)."""
    return json.dumps({**fields, "mac": record_mac(secret, key, fields)}, sort_keys=True).encode()


def verify_record(secret: bytes, key: str, value: bytes) -> dict[str, object] | None:
    """The fields of the record stored at `key`, or None if it is not a record signed with `secret` for that key
    (forged, altered, copied from another key, unsigned, or not JSON)."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if not isinstance(data, dict) or not isinstance(data.get("mac"), str):
        return None
    mac = data.pop("mac")
    if not (mac.isascii() and len(mac) == 64):  # compare_digest raises on non-ASCII text: a bad record, no crash
        return None
    try:
        expected = record_mac(secret, key, data)
    except (ValueError, TypeError, RecursionError):  # fields nested too deep to encode again, or not JSON's
        return None
    return data if hmac.compare_digest(expected, mac) else None


def token_metadata(secret: bytes) -> tuple[tuple[str, str], ...]:
    """The call metadata of a cluster-internal call."""
    return ((TOKEN_HEADER, peer_token(secret)),)


def parse_markets(spec: str) -> list[MarketConfig]:
    """`SYMBOL[:field=value...][,SYMBOL...]`, fields among tick_size, lot_size, min/max_price, min/max_size."""
    markets = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        symbol, *settings = item.split(":")
        values: dict[str, int] = {}
        for setting in settings:
            name, _, value = setting.partition("=")
            if name not in MARKET_FIELDS or not value.lstrip("-").isdigit():
                raise argparse.ArgumentTypeError(
                    f"bad market setting {setting!r} in {item!r}: "
                    f"use name=integer with name in {', '.join(MARKET_FIELDS)}"
                )
            values[name] = int(value)
        try:
            markets.append(MarketConfig(symbol, **values))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
    if not markets:
        raise argparse.ArgumentTypeError("at least one market is needed")
    return markets


def format_markets(markets: Iterable[MarketConfig]) -> str:
    """The canonical spec of `markets` (parse_markets reads it back): every field, in a fixed order."""
    return ",".join(
        ":".join([config.symbol, *(f"{name}={getattr(config, name)}" for name in MARKET_FIELDS)]) for config in markets
    )


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every service takes: where Consul is and its token, the cluster secret, the markets, the log level."""
    add_consul_arguments(parser)
    add_secret_argument(parser)
    parser.add_argument(
        "--markets", type=parse_markets, default=None,
        help="the cluster's markets, the first is the default, e.g. 'BTC-USD,ETH-USD:tick_size=5:lot_size=2' "
             "(fields: " + ", ".join(MARKET_FIELDS) + "); defined once for the cluster in Consul KV "
             "(exchange/config/markets) by the first process given it; later ones must match it or omit it",
    )
    parser.add_argument("--log-level", default=os.environ.get("EXCHANGE_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("EXCHANGE_LOG_FORMAT", "text"),
                        help="text lines, or one JSON object per line (docs/operations.md; env EXCHANGE_LOG_FORMAT)")


def add_consul_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the Consul agent is, and the ACL token this process presents to it."""
    parser.add_argument(
        "--consul",
        default=os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
        help="Consul agent HTTP address host:port (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)",
    )
    parser.add_argument(
        "--consul-token",
        default=os.environ.get("CONSUL_HTTP_TOKEN"),
        help="the Consul ACL token of this process's role (env CONSUL_HTTP_TOKEN; default: none, Consul's "
             "anonymous token; see docs/security.md)",
    )


def add_secret_argument(parser: argparse.ArgumentParser) -> None:
    """The cluster secret: what signs log entries and registry records and derives the cluster token."""
    parser.add_argument(
        "--cluster-secret",
        default=os.environ.get("EXCHANGE_CLUSTER_SECRET", DEFAULT_SECRET),
        help="shared secret: authenticates log entries, registry records and peer calls (env "
             "EXCHANGE_CLUSTER_SECRET)",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name from a --listen flag) is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0 / :: and the like: reachable from elsewhere


def refuse_development_secret(listen: str, secret: str) -> None:
    """Stops a process with an empty cluster secret, or one that would listen beyond loopback with the built-in
    development secret (it is in the source) or a short one: anyone who knows or guesses it could write the
    cluster's log."""
    host, _ = split_host_port(listen)
    if not secret:  # an unset variable in an env file, say: its token and MACs would be anyone's to make
        raise SystemExit("the cluster secret is empty: set --cluster-secret or EXCHANGE_CLUSTER_SECRET (the same on "
                         "every process of the cluster)")
    if len(secret) < MIN_SECRET_LENGTH and not is_loopback(host):
        raise SystemExit(f"refusing to listen on {listen} with a cluster secret of {len(secret)} characters: use at "
                         f"least {MIN_SECRET_LENGTH} (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    if secret == DEFAULT_SECRET and not is_loopback(host):
        raise SystemExit(
            f"refusing to listen on {listen} with the built-in development cluster secret: set your own with "
            "--cluster-secret or EXCHANGE_CLUSTER_SECRET (the same on every process of the cluster, e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`), or listen on 127.0.0.1"
        )
