"""A real Prometheus for the demo and the tests: the repository's own configuration (deploy/prometheus/), pointed at
a cluster's Consul with the intervals asked for, as a child process, and its HTTP API.

`find_prometheus` finds the binaries `make prometheus` (scripts/ensure-prometheus.sh) recorded. The product never
starts Prometheus: its processes serve `/metrics` and register the port in Consul (exchange/metrics.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from devtools.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy" / "prometheus"
PROMETHEUS_STAMP = REPO_ROOT / ".cache" / "prometheus" / "path"


def find_prometheus() -> Path:
    """The directory of `prometheus` and `promtool` recorded by `make prometheus`, else theirs on PATH."""
    if PROMETHEUS_STAMP.is_file():
        directory = Path(PROMETHEUS_STAMP.read_text().strip())
        if os.access(directory / "prometheus", os.X_OK) and os.access(directory / "promtool", os.X_OK):
            return directory
    found = shutil.which("prometheus")
    if found and shutil.which("promtool"):
        return Path(found).resolve().parent
    raise FileNotFoundError(f"no Prometheus: {PROMETHEUS_STAMP} is missing or stale and `prometheus` is not on "
                            "PATH; run `make prometheus` (scripts/ensure-prometheus.sh) first")


def web_assets(directory: Path) -> list[str]:
    """Debian's Prometheus serves its UI from files (/usr/share/prometheus/web/): where they were extracted."""
    assets = directory.parent / "share" / "prometheus" / "web"
    return [f"--web.local-assets={assets}/"] if assets.is_dir() else []


def configuration(consul_address: str, interval: str, consul_token: str | None = None) -> str:
    """deploy/prometheus/prometheus.yml for the cluster whose Consul agent is `consul_address` (with ACLs: read
    the catalog with `consul_token`), scraping and evaluating every `interval`, with the rules file by its
    absolute path."""
    text = (DEPLOY / "prometheus.yml").read_text()
    server = f"server: {consul_address}" + ("" if consul_token is None else f"\n        token: {consul_token}")
    for old, new in (("server: 127.0.0.1:8500", server),
                     ("scrape_interval: 15s", f"scrape_interval: {interval}"),
                     ("evaluation_interval: 15s", f"evaluation_interval: {interval}"),
                     ("  - alerts.yml", f"  - {DEPLOY / 'alerts.yml'}")):
        if old not in text:
            raise ValueError(f"{DEPLOY / 'prometheus.yml'} no longer has {old!r}: update devtools/prometheus.py")
        text = text.replace(old, new)
    return text


class PrometheusServer:
    """One Prometheus scraping a cluster through its Consul (deploy/prometheus/ configuration), data under
    `workdir`. It runs in a session of its own: the demo leaves it running after the command ends."""

    def __init__(self, workdir: Path, consul_address: str, port: int | None = None, interval: str = "1s",
                 consul_token: str | None = None) -> None:
        self.workdir = workdir
        self.consul_address = consul_address
        self.consul_token = consul_token
        self.port = port or free_port()
        self.interval = interval
        self.log_file = workdir / "logs" / "prometheus.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def start(self, timeout: float = 30.0) -> None:
        directory = find_prometheus()
        config = self.workdir / "prometheus.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(configuration(self.consul_address, self.interval, self.consul_token))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                [str(directory / "prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", *web_assets(directory)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"Prometheus exited ({self.popen.returncode}):\n{self.read_log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Prometheus did not get ready within {timeout:.0f}s:\n{self.read_log()[-3000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def read_log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # -- the HTTP API -------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {path}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's series: (labels, value) each."""
        return [(series["metric"], float(series["value"][1])) for series in self.api("query", query=expr)["result"]]

    def value(self, expr: str) -> float | None:
        """The value of a query of one series (None if it has none)."""
        result = self.query(expr)
        if len(result) > 1:
            raise ValueError(f"{expr} has {len(result)} series, not one")
        return result[0][1] if result else None

    def targets(self) -> dict[str, str]:
        """Each active target's instance label and health (up, down, unknown)."""
        return {target["labels"]["instance"]: target["health"] for target in self.api("targets")["activeTargets"]}
