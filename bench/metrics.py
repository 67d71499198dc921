"""What metrics cost: the unary (64 in flight) and both streaming cases on a 3-node cluster with every process
serving Prometheus metrics (`--metrics-listen`: the gRPC interceptors on, the exchange's series counted) and
scraped every second, against the same cluster without metrics, in one run.

Both clusters run side by side (bench.cluster_load.side_by_side: the order alternating, off, on, on, off, ...,
METRICS_ROUNDS rounds, each case's figure its best run; then each must agree with a replay of its log). The
scraper is a process of its own (`python -m bench.metrics scrape URL...`), as Prometheus would be, scraping every
process of the cluster with metrics every second (15x Prometheus's default interval) for the whole run.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.cluster_load import _log, side_by_side
from devtools.local_cluster import Cluster

METRICS_ROUNDS = 3
TARGET_METRICS = 0.95  # with metrics on >= x the throughput without
SCRAPE_INTERVAL_S = 1.0


@contextlib.contextmanager
def _scraped(cluster: Cluster) -> Iterator[None]:
    """Every process's /metrics scraped every SCRAPE_INTERVAL_S by a process of its own while the block runs."""
    urls = [cluster.metrics_url(process.name) for process in cluster.processes()]
    scraper = subprocess.Popen([sys.executable, "-m", "bench.metrics", "scrape", *urls], stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        scraper.terminate()
        scraper.wait(10)


@contextlib.contextmanager
def _scraped_and_sized(cluster: Cluster, sizes: dict[str, int]) -> Iterator[None]:
    """`_scraped`, then the size of every process's page, into `sizes`."""
    with _scraped(cluster):
        yield
    sizes.update({process.name: len(urllib.request.urlopen(cluster.metrics_url(process.name), timeout=10).read())
                  for process in cluster.processes()})


def run(seconds: float = 4.0, workdir: Path | None = None) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    clusters = {mode: Cluster(workdir / f"cluster-metrics-{mode}", nodes=3, secret="bench-secret",
                              metrics=mode == "on") for mode in ("off", "on")}
    _log("two clusters of 3 nodes: metrics off, and metrics on (scraped every second)")
    scrape_bytes: dict[str, int] = {}
    result: dict = side_by_side(clusters, seconds, METRICS_ROUNDS,
                                lambda: _scraped_and_sized(clusters["on"], scrape_bytes))
    result["scrape_bytes"] = scrape_bytes
    return result


def table(result: dict) -> str:
    off, on = result["off"], result["on"]
    lines = [f"metrics: the same load on 3 nodes with every process serving /metrics (scraped every "
             f"{SCRAPE_INTERVAL_S:g} s) and without; best of {METRICS_ROUNDS} alternating rounds each",
             f"{'case':<28} {'off':>10} {'on':>10} {'ratio':>6}  {'CPU/order off':>14} {'on':>8}"]
    verdicts = []
    pairs = [("unary, 64 in flight", off["unary_64"], on["unary_64"])]
    pairs += [(f"streaming, {'1 order/message' if a['batch'] == 1 else 'batches of ' + str(a['batch'])}", a, b)
              for a, b in zip(off["streaming"], on["streaming"], strict=True)]
    for name, without, with_ in pairs:
        ratio = with_["rate"] / without["rate"] if without["rate"] else 0.0
        cpu = [case["cost"]["cpu_us"]["total"] if case.get("cost") else 0.0 for case in (without, with_)]
        lines.append(f"{name:<28} {without['rate']:>10,.0f} {with_['rate']:>10,.0f} {ratio:>5.2f}x  "
                     f"{cpu[0]:>11.0f} us {cpu[1]:>5.0f} us")
        verdicts.append(f"{name}, metrics on >= {TARGET_METRICS}x off: "
                        f"{'PASS' if ratio >= TARGET_METRICS else 'FAIL'} ({ratio:.3f})")
    sizes = ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in result["scrape_bytes"].items())
    lines.append(f"scrape size: {sizes}")
    return "\n".join([*lines, "", "targets:", *(f"  {line}" for line in verdicts)])


def scrape(urls: list[str]) -> None:
    """Scrapes every URL every SCRAPE_INTERVAL_S until terminated (a failed scrape is skipped, as Prometheus's)."""
    while True:
        began = time.monotonic()
        for url in urls:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=5).read()
        time.sleep(max(0.0, SCRAPE_INTERVAL_S - (time.monotonic() - began)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["scrape"]:
        scrape(sys.argv[2:])
