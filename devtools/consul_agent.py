"""Real Consul agents on free loopback ports, as child processes (tests, the demo, chaos, the bench).

`ConsulDevAgent` is one ``consul agent -dev`` (everything in memory: a restart loses every registration);
`ConsulServers` is a cluster of three server agents (a real Raft group, each server with its own ports and
data directory; what the Sequencer's HA mode keeps its log in). Both start, stop, kill and restart their
agents; `find_consul_binary` finds the binary that `make consul` recorded. The product never starts Consul:
it only talks to a local agent's HTTP address (discovery/consul.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from devtools.ports import free_port
from exchange.shared.tls import CA_FILE, CERT_FILE, KEY_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSUL_STAMP = REPO_ROOT / ".cache" / "consul" / "path"


def find_consul_binary() -> str:
    """The Consul binary recorded by ``make consul``, else ``consul`` on PATH."""
    if CONSUL_STAMP.is_file():
        path = CONSUL_STAMP.read_text().strip()
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("consul")
    if found:
        return found
    raise FileNotFoundError(
        f"no Consul binary: {CONSUL_STAMP} is missing or stale and `consul` is not on PATH; "
        "run `make consul` (scripts/ensure-consul.sh) first"
    )


class ConsulDevAgent:
    """A ``consul agent -dev`` child process bound to 127.0.0.1 only.

    Dev mode keeps everything in memory: :meth:`restart` loses every registration, which is
    exactly what the fault tests want to exercise.
    """

    def __init__(
        self,
        binary: str | None = None,
        data_dir: Path | None = None,
        log_file: Path | None = None,
        http_port: int | None = None,
        node_name: str | None = None,
        start_timeout: float = 20.0,
        client_addr: str = "127.0.0.1",
        tls_dir: Path | None = None,
        config_file: Path | None = None,
    ) -> None:
        """``client_addr``: where the HTTP API listens, a space-separated list of addresses (the API
        is also reachable on 127.0.0.1 only if that is in the list). ``config_file``: more configuration
        (devtools/consul_acl.py's: ACLs and the gossip key)."""
        self._binary = binary or find_consul_binary()
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="consul-dev-"))
        self._data_dir = Path(data_dir)
        self._log_file = Path(log_file) if log_file else self._data_dir / "consul.log"
        self._requested_http_port = http_port
        self._node = node_name or f"dev-{uuid.uuid4().hex[:8]}"
        self._start_timeout = start_timeout
        self._client_addr = client_addr
        self._tls_dir = tls_dir
        self._config_file = config_file
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -------------------------------------------------------------------------
    @property
    def http_port(self) -> int:
        if self._ports is None:
            raise RuntimeError("Consul agent not started yet")
        return self._ports["http"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def node_name(self) -> str:
        return self._node

    @property
    def service_address(self) -> str:
        """The address the cluster's services use: `https://127.0.0.1:PORT` with a `tls_dir` (the API over TLS with
        the cluster's CA), else the plain HTTP one (which the harness itself keeps using, on loopback)."""
        if self._tls_dir is None:
            return self.address
        assert self._ports is not None
        return f"https://127.0.0.1:{self._ports['https']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def binary(self) -> str:
        return self._binary

    def version(self) -> str:
        out = subprocess.run([self._binary, "version"], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[0] if out.stdout else ""

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> ConsulDevAgent:
        """Start (on the same ports as before if it ran already) and wait for a leader."""
        if self.running:
            return self
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        reuse = self._ports is not None
        attempts = 1 if reuse else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            if not reuse:
                self._ports = self._pick_ports()
            try:
                self._spawn_and_wait()
                return self
            except _EarlyExit as e:  # most likely a port race: pick new ports and retry
                last_error = e
        assert last_error is not None
        raise RuntimeError(str(last_error)) from last_error

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the agent's process group, SIGKILL it after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(5)

    def kill(self) -> None:
        """SIGKILL at once (a crash rather than a clean stop)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._signal(proc, signal.SIGKILL)
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ConsulDevAgent:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def read_log(self) -> str:
        try:
            return self._log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- internals --------------------------------------------------------------------------
    def _pick_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        used: set[int] = set()

        def pick(udp: bool) -> int:
            while True:
                p = free_port(udp=udp)
                if p not in used:
                    used.add(p)
                    return p

        ports["http"] = self._requested_http_port or pick(False)
        used.add(ports["http"])
        ports["dns"] = pick(True)
        ports["serf_lan"] = pick(True)
        ports["serf_wan"] = pick(True)
        ports["server"] = pick(False)
        ports["grpc"] = pick(False)
        if self._tls_dir is not None:
            ports["https"] = pick(False)
        return ports

    def _mode(self) -> list[str]:
        """The arguments that make this agent what it is."""
        return ["-dev"]

    def _command(self) -> list[str]:
        assert self._ports is not None
        p = self._ports
        return [
            self._binary,
            "agent",
            *self._mode(),
            "-bind=127.0.0.1",
            f"-client={self._client_addr}",
            f"-node={self._node}",
            f"-http-port={p['http']}",
            f"-dns-port={p['dns']}",
            f"-serf-lan-port={p['serf_lan']}",
            f"-serf-wan-port={p['serf_wan']}",
            f"-server-port={p['server']}",
            f"-grpc-port={p['grpc']}",
            "-log-level=info",
            # nothing may need the network: no update check, no anonymous usage signature
            "-hcl=disable_update_check = true",
            "-hcl=disable_anonymous_signature = true",
            *self._tls_options(),
            *([] if self._config_file is None else [f"-config-file={self._config_file}"]),
        ]

    def _tls_options(self) -> list[str]:
        """With a `tls_dir` (ca.pem, cert.pem, key.pem: exchange/shared/tls.py's layout), the agent's gRPC health
        checks of TLS services verify them against the cluster's CA and present the agent's certificate
        (services of a mutual-TLS cluster accept no connection without one). The checks expect the name
        `server_name` on the services' certificates (Consul 1.8 would use the agent's node name), and the
        agent's own certificate must carry it too: the dev certificates all carry `localhost`."""
        if self._tls_dir is None:
            return []
        files = {"ca_file": CA_FILE, "cert_file": CERT_FILE, "key_file": KEY_FILE}
        assert self._ports is not None
        return [*(f'-hcl={option} = "{self._tls_dir / name}"' for option, name in files.items()),
                "-hcl=enable_agent_tls_for_checks = true", '-hcl=server_name = "localhost"',
                f"-hcl=ports {{ https = {self._ports['https']} }}"]  # the services' API: service_address

    def _spawn_and_wait(self) -> None:
        self._spawn()
        self._wait_ready(time.monotonic() + self._start_timeout)

    def _spawn(self) -> None:
        cmd = self._command()
        with open(self._log_file, "ab") as log:
            log.write(f"\n==> {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self._data_dir,
            )

    def _wait_ready(self, deadline: float) -> None:
        """Until the agent knows a leader; raises _EarlyExit if it exits, RuntimeError past `deadline`."""
        assert self._proc is not None
        url = f"http://{self.address}/v1/status/leader"
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise _EarlyExit(
                    f"consul agent exited with code {code} during start; log {self._log_file}:\n"
                    + self.read_log()[-3000:]
                )
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as resp:
                if json.loads(resp.read() or b'""'):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"consul agent did not know a leader within {self._start_timeout}s; "
                    f"log {self._log_file}:\n" + self.read_log()[-3000:]
                )
            time.sleep(0.05)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session=True: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


class _EarlyExit(RuntimeError):
    pass


class ConsulServer(ConsulDevAgent):
    """One agent of a `ConsulServers` cluster: a server (data on disk, joining the other servers), or a client
    agent (`expect` 0: it joins the servers and holds no data; what a service's machine runs in production)."""

    def __init__(self, peers: list[ConsulServer], expect: int, *, data_dir: Path, log_file: Path, node_name: str,
                 start_timeout: float, client_addr: str, tls_dir: Path | None, config_file: Path | None,
                 http_port: int | None = None) -> None:
        super().__init__(data_dir=data_dir, log_file=log_file, http_port=http_port, node_name=node_name,
                         start_timeout=start_timeout, client_addr=client_addr, tls_dir=tls_dir, config_file=config_file)
        self._peers = peers
        self._expect = expect

    @property
    def serf_address(self) -> str:
        assert self._ports is not None
        return f"127.0.0.1:{self._ports['serf_lan']}"

    @property
    def server_address(self) -> str:
        """Its Raft address (what /v1/status/leader names)."""
        assert self._ports is not None
        return f"127.0.0.1:{self._ports['server']}"

    def pick_ports(self) -> None:
        if self._ports is None:
            self._ports = self._pick_ports()

    def _mode(self) -> list[str]:
        # Started together, the second server's first join fails and, by default, is retried only 30 s later:
        # every server is given the others to join, retried every second.
        joins = [f"-retry-join={peer.serf_address}" for peer in self._peers if peer is not self]
        role = ["-server", f"-bootstrap-expect={self._expect}"] if self._expect else []
        return [*role, f"-data-dir={self._data_dir / 'data'}", *joins, "-retry-interval=1s",
                "-hcl=performance { raft_multiplier = 1 }",
                "-hcl=leave_on_terminate = false"]  # a client agent leaves gracefully by default: 4 s per stop

    def spawn(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        self._spawn()

    def start(self) -> ConsulServer:
        """(Re)starts this server on its ports and waits until it knows the cluster's leader."""
        if not self.running:
            self.spawn()
            self._wait_ready(time.monotonic() + self._start_timeout)
        return self


class ConsulServers:
    """`count` Consul servers on loopback forming one cluster (`-bootstrap-expect`, each given the others to
    join), with `performance { raft_multiplier = 1 }` (Consul's production timing: a lost Raft leader is
    replaced within seconds), and `clients` client agents joined to them. Process `i` of a harness talks to
    server `i % count`'s HTTP API (`address_for`), or to client agent `i` (`client_address`)."""

    def __init__(self, workdir: Path, count: int = 3, http_ports: list[int] | None = None,
                 client_addr: str = "127.0.0.1", tls_dir: Path | None = None, start_timeout: float = 60.0,
                 clients: int = 0, config_file: Path | None = None) -> None:
        self.servers: list[ConsulServer] = []
        for index in range(count):
            self.servers.append(ConsulServer(
                self.servers, count, data_dir=workdir / f"consul-{index + 1}",
                log_file=workdir / "logs" / f"consul-{index + 1}.log",
                http_port=http_ports[index] if http_ports else None, node_name=f"consul-server-{index + 1}",
                start_timeout=start_timeout, client_addr=client_addr, tls_dir=tls_dir, config_file=config_file,
            ))
        self.clients = [ConsulServer(
            self.servers, 0, data_dir=workdir / f"consul-client-{index + 1}",
            log_file=workdir / "logs" / f"consul-client-{index + 1}.log", node_name=f"consul-client-{index + 1}",
            start_timeout=start_timeout, client_addr=client_addr, tls_dir=tls_dir, config_file=config_file,
        ) for index in range(clients)]
        self._start_timeout = start_timeout

    # -- what the harness reads of one agent ------------------------------------------------------
    @property
    def address(self) -> str:
        return self.servers[0].address

    @property
    def http_port(self) -> int:
        return self.servers[0].http_port

    @property
    def log_file(self) -> Path:
        return self.servers[0].log_file

    @property
    def agents(self) -> list[ConsulServer]:
        return [*self.servers, *self.clients]

    @property
    def running(self) -> bool:
        return all(agent.running for agent in self.agents)

    @property
    def pids(self) -> list[int]:
        return [agent.pid for agent in self.agents if agent.pid is not None]

    def address_for(self, index: int) -> str:
        """The address process `index` of a harness uses: a server's (`service_address`)."""
        return self.servers[index % len(self.servers)].service_address

    def client_address(self, index: int) -> str:
        """The address the service on client agent `index`'s machine uses (`service_address`)."""
        return self.clients[index].service_address

    def read_log(self) -> str:
        return "\n".join(f"--- {agent.log_file.name} ---\n{agent.read_log()}" for agent in self.agents)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> ConsulServers:
        """Starts every agent that is not running and waits until each knows the leader."""
        for agent in self.agents:
            agent.pick_ports()
        stopped = [agent for agent in self.agents if not agent.running]
        for server in stopped:
            server.spawn()
        deadline = time.monotonic() + self._start_timeout
        try:
            for server in stopped:
                server._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        for agent in reversed(self.agents):
            agent.stop(timeout)

    def leader_index(self, timeout: float = 1.0) -> int | None:
        """Which server is the Raft leader now (None if no running server names one)."""
        for server in self.servers:
            if not server.running:
                continue
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(
                    f"http://{server.address}/v1/status/leader", timeout=timeout) as response:
                leader = json.loads(response.read() or b'""')
                for index, candidate in enumerate(self.servers):
                    if candidate.server_address == leader:
                        return index
        return None
