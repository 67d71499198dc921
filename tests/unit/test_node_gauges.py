"""The node's scrape-time gauges (exchange/node/metrics.py): a book's checksum is a pass over the book, so a
scrape computes it again only once the market moved and the last one is CHECKSUM_EVERY_S old."""

from __future__ import annotations

from exchange.engine import MarketConfig
from exchange.node.broadcast import PeerSet
from exchange.node.metrics import CHECKSUM_EVERY_S, NodeGauges
from exchange.node.replica import Replica


class Book(Replica):
    """A replica whose sequence the test moves, counting the checksums computed."""

    def __init__(self) -> None:
        super().__init__([MarketConfig("X")])
        self.seq = 5
        self.computed = 0

    def applied_seq(self, market: str) -> int:
        return self.seq

    def checksum(self, market: str) -> int:
        self.computed += 1
        return 1000 + self.seq


def test_the_checksum_and_its_sequence_agree_and_are_computed_at_most_every_interval() -> None:
    book, now = Book(), [0.0]
    gauges = NodeGauges(book, {}, PeerSet(None, "node-1", b"s", static_peers=[]), lambda: True, clock=lambda: now[0])
    assert gauges.checksum("X") == (5, 1005)
    assert gauges.checksum("X") == (5, 1005) and book.computed == 1  # idle: nothing to compute
    book.seq = 9
    now[0] += CHECKSUM_EVERY_S / 2
    assert gauges.checksum("X") == (5, 1005) and book.computed == 1  # moved, but computed recently: the last pair
    now[0] += CHECKSUM_EVERY_S / 2
    assert gauges.checksum("X") == (9, 1009) and book.computed == 2
    now[0] += 100
    assert gauges.checksum("X") == (9, 1009) and book.computed == 2  # idle again: current, not computed again
