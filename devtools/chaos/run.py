"""The chaos checker's orchestrator: builds the cluster (`make_cluster`), runs the load with its faults and
monitor, then the checks (`run_chaos`), and prints the summary table (`print_summary`).

The whole run has a time limit (`Config.limit`): when it passes, the clients and the faults stop, the
violation "time limit exceeded" is recorded (naming the logs' location), the checks that could take long
are skipped, and a failing report is returned instead of the run hanging.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from devtools.chaos.checks import Checks
from devtools.chaos.faults import Faults
from devtools.chaos.monitor import Monitor
from devtools.chaos.records import CLIENT_TIMEOUT, MAX_ATTEMPTS, Config, Ledger, Report
from devtools.chaos.workload import Clients
from devtools.local_cluster import Cluster
from devtools.netns import NetNamespaces
from exchange.cluster_common import parse_markets


class Run:
    """One run against a started cluster: the load phase (clients, faults, monitor), then settle and check."""

    def __init__(self, config: Config, cluster: Cluster, ledger: Ledger) -> None:
        self.config = config
        self.cluster = cluster
        self.ledger = ledger
        markets = [m.symbol for m in parse_markets(cluster.markets)]
        self.done = threading.Event()  # the load phase is over: faults and monitor stop
        self.clients = Clients(config, cluster, ledger, markets)
        self.faults = Faults(config, cluster, ledger, self.clients, markets, self.done)
        self.monitor = Monitor(cluster, ledger, self.done, config.progress_interval)
        self.checks = Checks(cluster, ledger, self.clients, markets, config.settle_timeout)

    def run(self) -> Report:
        config, ledger = self.config, self.ledger
        ledger.started = time.monotonic()
        threads = [threading.Thread(target=self.monitor.watch, daemon=True, name="monitor"),
                   threading.Thread(target=self.monitor.progress_loop, daemon=True, name="progress")]
        fault_thread = threading.Thread(target=self.faults.run, daemon=True, name="faults")
        clients = [threading.Thread(target=self.clients.client, args=(i,), daemon=True, name=f"client-{i}")
                   for i in range(config.clients)]
        for thread in [*threads, fault_thread, *clients]:
            thread.start()
        try:
            # The load runs for the duration and at least until the last fault has healed (or time is up).
            while time.monotonic() - ledger.started < config.duration or not self.faults.finished.is_set():
                if ledger.expired.wait(0.2):
                    break
        finally:
            self.clients.stop.set()
            for thread in clients:
                thread.join(timeout=MAX_ATTEMPTS * (CLIENT_TIMEOUT + 2))
            self.done.set()
            fault_thread.join(timeout=120)
        self.monitor.progress()
        ledger.note("load stopped; settling")
        return self.settle_and_check()

    def settle_and_check(self) -> Report:
        ledger = self.ledger
        report = Report(self.config.seed)
        report.final = self.checks.settle(report)
        if ledger.expired.is_set():
            ledger.note("time limit exceeded: the log and ledger checks are skipped")
        else:
            self.checks.check_log(report.final, report)
        self.checks.check_processes()
        report.violations = list(ledger.violations)
        with ledger.stats.lock:
            report.counts = dict(ledger.stats.counts)
            report.faults = dict(ledger.stats.faults)
        report.elapsed = time.monotonic() - ledger.started
        self.clients.close()
        return report


def make_cluster(config: Config, workdir: Path, out: Callable[[str], None] = print) -> Cluster:
    netns = config.netns
    reason = NetNamespaces.unavailable_reason() if netns in (None, True) else "disabled"
    if netns is None:
        netns = reason is None
    if not netns and "partition" in config.faults:
        out(f"network namespaces are not available ({reason}): running without the partition fault")
        config.faults = tuple(kind for kind in config.faults if kind != "partition")
    snapshots = ["--snapshot-every", str(config.snapshot_every), "--snapshot-threshold", str(config.snapshot_threshold)]
    return Cluster(workdir, nodes=config.nodes, netns=netns, ha=config.ha, extra_node_args=snapshots)


def run_chaos(config: Config, cluster: Cluster, out: Callable[[str], None] = print) -> Report:
    """Runs the checker against a cluster built (not started) by make_cluster(); does not stop it."""
    out(f"chaos seed {config.seed}: {config.clients} clients, {config.orders or 'unlimited'} orders, "
        f"{config.duration:.0f}s, faults {','.join(config.faults) or 'none'}, workdir {cluster.workdir}, "
        f"netns {'yes' if cluster.netns is not None else 'no'}, time limit {config.limit:.0f}s")
    out(f"reproduce with: python -m devtools.chaos --seed {config.seed} --orders {config.orders} "
        f"--duration {config.duration:g} --clients {config.clients} --faults {','.join(config.faults)}"
        + (" --ha" if config.ha else ""))
    ledger = Ledger(out)

    def expire() -> None:
        ledger.expired.set()
        ledger.violation(f"time limit exceeded: the run took more than {config.limit:.0f}s; its clients and "
                         f"faults are stopped; logs in {cluster.workdir / 'logs'}")

    timer = threading.Timer(config.limit, expire)
    timer.daemon = True
    timer.start()
    try:
        cluster.start()
        out(f"cluster up: Consul {cluster.consul_address}, Sequencer {cluster.sequencer_address}, "
            f"nodes {' '.join(cluster.node_addresses)}")
        report = Run(config, cluster, ledger).run()
    finally:
        timer.cancel()
    print_summary(report, out)
    return report


def print_summary(report: Report, out: Callable[[str], None] = print) -> None:
    c = Counter(report.counts)
    rows = [
        ("seed", report.seed), ("elapsed", f"{report.elapsed:.1f}s"),
        ("operations sent", c["sent"]), ("acknowledged", c["acked"]),
        ("  of which market-rejected (REJECTED status)", c["market_rejected"]),
        ("rejected (INVALID_ARGUMENT / NOT_FOUND / ...)", c["rejected"]), ("aborted", c["aborted"]),
        ("ambiguous answers (retried)", c["ambiguous"]), ("unresolved after retries", c["unresolved"]),
        ("probe orders of the fault injector", c["probes"]), ("entries replayed", c["replayed"]),
        ("killed nodes restarted from their own snapshot", c["restarts_own_snapshot"]),
        ("  ... and then from a peer's", c["restarts_peer_snapshot"]),
        ("forged broadcasts refused", c["forged_refused"]),
        ("trades prevented between orders of one account", c["self_trades_prevented"]),
    ]
    rows += [(f"faults: {kind}", count) for kind, count in sorted(report.faults.items())]
    rows += [(f"final {market} (seq, checksum)", view) for market, view in sorted(report.final.items())]
    rows += [("divergences", report.divergences), ("violations", len(report.violations))]
    width = max(len(name) for name, _ in rows)
    out("=" * (width + 20))
    for name, value in rows:
        out(f"{name:<{width}}  {value}")
    out("=" * (width + 20))
    for violation in report.violations:
        out(f"VIOLATION: {violation}")
    out("RESULT: " + ("OK, no violation" if report.ok else f"FAILED ({len(report.violations)} violations)"))
