"""client_order_id deduplication: the key of a command, and the window of keys the Sequencer remembers.

The promise (README, "Orders"): a retry with the same client_order_id within the window, the last
`--dedup-window` commands of its market, is never placed twice; it is answered with the first order. The
window is a count of log entries, not a time: it is the same on every replica and after every restart (it is
rebuilt from the log's last entries), and the memory it takes is bounded whatever the rate.
"""

from __future__ import annotations

from collections import deque

from exchange.v1 import types_pb2

DEFAULT_WINDOW = 200_000  # commands per market (the nodes keep the results of as many: --journal-size)


def dedup_key(command: types_pb2.Command) -> str | None:
    """The key a command is deduplicated by (None: it is not)."""
    return command.client_order_id or None


class DedupWindow:
    """The dedup keys of a market's last `size` log entries, with their numbers.

    `get` answers for the window ending at the last number noted. Keys are forgotten only once they are out
    of the window of the durable end (`forget_before`), so forgetting numbers that were never stored
    (`truncate`) never needs a key back: a key numbered again after its window (its earlier number is
    remembered with it) gets its earlier number back."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the dedup window must hold at least 1 entry, got {size}")
        self.size = size
        self.last = 0  # the last number noted
        self._forgotten = 0  # every key numbered at or before this is forgotten
        self._seqs: dict[str, int] = {}
        self._order: deque[tuple[int, str, int]] = deque()  # (seq, key, the key's earlier seq or 0)

    def __len__(self) -> int:
        return len(self._seqs)

    def get(self, key: str) -> int | None:
        seq = self._seqs.get(key)
        return seq if seq is not None and seq > self.last - self.size else None

    def note(self, seq: int, key: str | None) -> None:
        """Entry `seq` (the next number) was assigned, with `key`."""
        self.last = seq
        if key is not None:
            self._order.append((seq, key, self._seqs.get(key, 0)))
            self._seqs[key] = seq

    def forget_before(self, durable: int) -> None:
        """Drops the keys out of the window of `durable` (the durable end: nothing before it can be undone)."""
        order, seqs, limit = self._order, self._seqs, durable - self.size
        while order and order[0][0] <= limit:
            seq, key, _ = order.popleft()
            if seqs.get(key) == seq:
                del seqs[key]
        self._forgotten = max(self._forgotten, limit)

    def truncate(self, last: int) -> None:
        """Forgets the numbers after `last` (assigned, never stored)."""
        order, seqs = self._order, self._seqs
        while order and order[-1][0] > last:
            seq, key, earlier = order.pop()
            if seqs.get(key) == seq:
                if earlier > self._forgotten:
                    seqs[key] = earlier
                else:
                    del seqs[key]
        self.last = min(self.last, last)
