"""The chaos checker's monitor: unexpected process deaths while the run lasts, and the progress lines."""

from __future__ import annotations

import threading
import time

from devtools.chaos.records import Ledger
from devtools.local_cluster import Cluster


class Monitor:
    """`watch` and `progress_loop` run in their own threads until `done` is set."""

    def __init__(self, cluster: Cluster, ledger: Ledger, done: threading.Event, interval: float) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.done = done
        self.interval = interval

    def watch(self) -> None:
        """A process that exits while no fault holds it down is a violation (reported once)."""
        reported: set[int] = set()
        expected_down = self.ledger.expected_down
        while not self.done.wait(0.5):
            processes = [*self.cluster.processes()]
            for process in processes:
                if process.name not in expected_down and not process.running and id(process) not in reported:
                    reported.add(id(process))
                    self.ledger.violation(f"{process.name} exited unexpectedly (exit code {process.exit_code()})")
            if "consul" not in expected_down and not self.cluster.consul.running and -1 not in reported:
                reported.add(-1)
                self.ledger.violation("the Consul agent exited unexpectedly")

    def progress_header(self) -> None:
        self.ledger.out(f"{'elapsed':>8} {'sent':>7} {'acked':>7} {'rejected':>8} {'aborted':>7} {'ambig':>6} "
                        f"{'mkt-rej':>7} {'faults':>6}")

    def progress(self) -> None:
        stats = self.ledger.stats
        with stats.lock:
            c, faults = stats.counts, sum(stats.faults.values())
            row = (f"{time.monotonic() - self.ledger.started:7.1f}s {c['sent']:7d} {c['acked']:7d} "
                   f"{c['rejected']:8d} {c['aborted']:7d} {c['ambiguous']:6d} {c['market_rejected']:7d} {faults:6d}")
        self.ledger.out(row)

    def progress_loop(self) -> None:
        self.progress_header()
        while not self.done.wait(self.interval):
            self.progress()
