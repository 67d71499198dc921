"""client_order_id deduplication: the key of a command, and the window of keys the Sequencer remembers (the
nodes keep one too, over their own `--journal-size` window, to answer a retry with its first result at once).

The Sequencer's promise (README, "Orders"): a retry with the same client_order_id within the window, the last
`--dedup-window` commands of its market, is never placed twice; it is answered with the first order. The
window is a count of log entries, not a time: it is the same on every replica and after every restart (it is
rebuilt from the log's last entries), and the memory it takes is bounded whatever the rate.
"""

from __future__ import annotations

from collections import deque

from exchange.v1 import types_pb2

DEFAULT_WINDOW = 200_000  # commands per market (the nodes keep the results of the last --journal-size ones)


def dedup_key(command: types_pb2.Command) -> str | None:
    """What makes two commands the same order for deduplication: the account and its client_order_id (unique
    per account); None for a command without a client_order_id. Stored in the log's client_order_id column."""
    if not command.client_order_id:
        return None
    return client_key(command.account, command.client_order_id)


def client_key(account: str, client_order_id: str) -> str:
    """The dedup key of `account`'s `client_order_id` (see `dedup_key`)."""
    return f"{account}\x1f{client_order_id}" if account else client_order_id


def split_key(key: str) -> tuple[str, str]:
    """(account, client_order_id) of a dedup key: `client_key`'s inverse."""
    account, separator, client_order_id = key.partition("\x1f")
    return (account, client_order_id) if separator else ("", key)


class DedupWindow:
    """The dedup keys of a market's last `size` log entries, with their numbers.

    `get` answers for the window ending at the last number noted. Keys are forgotten only once they are out
    of the window of the durable end (`forget_before`), so forgetting numbers that were never stored
    (`truncate`) never needs a key back: a key numbered again after its window (its earlier number is
    remembered with it) gets its earlier number back.

    Memory: the key string, its dict slot, one int and two deque slots per key (~170 bytes with 22-character
    ids); the numbers and keys in order are two deques rather than a tuple each (that took ~250 bytes)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the dedup window must hold at least 1 entry, got {size}")
        self.size = size
        self.last = 0  # the last number noted
        self._forgotten = 0  # every key numbered at or before this is forgotten
        self._seqs: dict[str, int] = {}
        self._order_seqs: deque[int] = deque()  # the numbers with a key, in order ...
        self._order_keys: deque[str] = deque()  # ... and their keys
        self._earlier: dict[int, int] = {}  # number -> the earlier number of its key (a key used again)

    def __len__(self) -> int:
        return len(self._seqs)

    def get(self, key: str) -> int | None:
        seq = self._seqs.get(key)
        return seq if seq is not None and seq > self.last - self.size else None

    def items(self) -> list[tuple[str, int]]:
        """Every key within the window with its number, oldest first."""
        floor = self.last - self.size
        return [(key, seq) for seq, key in zip(self._order_seqs, self._order_keys, strict=True)
                if seq > floor and self._seqs.get(key) == seq]

    def note(self, seq: int, key: str | None) -> None:
        """Entry `seq` (the next number) was assigned, with `key`."""
        self.last = seq
        if key is not None:
            earlier = self._seqs.get(key)
            if earlier is not None:
                self._earlier[seq] = earlier
            self._seqs[key] = seq
            self._order_seqs.append(seq)
            self._order_keys.append(key)

    def forget_before(self, durable: int) -> None:
        """Drops the keys out of the window of `durable` (the durable end: nothing before it can be undone)."""
        seqs, limit = self._seqs, durable - self.size
        order_seqs, order_keys, earlier = self._order_seqs, self._order_keys, self._earlier
        while order_seqs and order_seqs[0] <= limit:
            seq, key = order_seqs.popleft(), order_keys.popleft()
            if seqs.get(key) == seq:
                del seqs[key]
            if earlier:
                earlier.pop(seq, None)
        self._forgotten = max(self._forgotten, limit)

    def truncate(self, last: int) -> None:
        """Forgets the numbers after `last` (assigned, never stored)."""
        seqs, order_seqs, order_keys = self._seqs, self._order_seqs, self._order_keys
        while order_seqs and order_seqs[-1] > last:
            seq, key = order_seqs.pop(), order_keys.pop()
            earlier = self._earlier.pop(seq, 0)
            if seqs.get(key) == seq:
                if earlier > self._forgotten:
                    seqs[key] = earlier
                else:
                    del seqs[key]
        self.last = min(self.last, last)
