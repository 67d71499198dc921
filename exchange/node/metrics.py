"""The node's counters of what it did since it started, shown by GetStatus (`counters`).

One process-wide registry, as metrics libraries keep them: incremented on the hot paths (a dict update
each), read by GetStatus and the benchmark (messages per order at each cluster size).
"""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()
