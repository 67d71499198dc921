"""Log entries: how a sequenced command is authenticated between the Sequencer and the nodes.

The Sequencer signs every entry with HMAC-SHA256 over (market, seq, command bytes) using the
cluster secret; a node applies a broadcast entry only if the MAC proves it is the Sequencer's own
log entry, so a forged, altered or misnumbered BroadcastOrder can never change a book.
"""

from __future__ import annotations

import hashlib
import hmac

from exchange.v1 import types_pb2


def entry_mac(secret: bytes, market: str, seq: int, command: bytes) -> bytes:
    header = market.encode() + b"\x00" + seq.to_bytes(8, "big", signed=True)
    return hmac.digest(secret, header + command, hashlib.sha256)


def entry_is_authentic(secret: bytes, entry: types_pb2.SequencedCommand) -> bool:
    expected = entry_mac(secret, entry.market, entry.seq, entry.command)
    return hmac.compare_digest(expected, entry.mac)
