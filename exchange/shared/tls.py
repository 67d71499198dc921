"""Mutual TLS for every gRPC connection of the cluster, optional (`--tls-dir DIR`; plaintext without it).

DIR holds three PEM files: `ca.pem`, the cluster's CA certificate; `cert.pem` and `key.pem`, this process's
certificate (signed by that CA, valid for the addresses it serves on, for both serving and calling) and its
private key. With them a server accepts only clients that present a certificate of the cluster's CA, and a
channel accepts only servers that do, presenting the process's own certificate. The cluster token is still
checked on the cluster's own RPCs: TLS says who may connect, the token which calls are the cluster's.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from exchange.shared.wire import split_host_port

if TYPE_CHECKING:  # the client loads no discovery code: only the processes reach Consul
    from discovery.consul import ConsulHttps

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"


@dataclass(frozen=True)
class TlsConfig:
    directory: Path
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, directory: Path | str) -> TlsConfig:
        """Reads DIR/ca.pem, DIR/cert.pem and DIR/key.pem; SystemExit naming what is missing."""
        directory = Path(directory)
        files = {}
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            path = directory / name
            try:
                files[name] = path.read_bytes()
            except OSError as error:
                raise SystemExit(
                    f"--tls-dir {directory}: cannot read {path} ({error.strerror}); the directory must hold "
                    f"{CA_FILE} (the cluster's CA), {CERT_FILE} and {KEY_FILE} (this process's certificate and key)"
                ) from error
        return cls(directory, files[CA_FILE], files[CERT_FILE], files[KEY_FILE])

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def add_tls_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-dir", type=Path, default=os.environ.get("EXCHANGE_TLS_DIR") or None,
        help=f"mutual TLS: a directory with {CA_FILE} (the cluster's CA), {CERT_FILE} and {KEY_FILE} "
             "(env EXCHANGE_TLS_DIR; default: plaintext)",
    )


def load_tls(directory: Path | None) -> TlsConfig | None:
    """The TLS configuration of a `--tls-dir` flag (None: plaintext)."""
    return None if directory is None else TlsConfig.load(directory)


def consul_endpoint(address: str, tls_dir: Path | None) -> tuple[str, int, ConsulHttps | None]:
    """Where the Consul agent is (`--consul`: `host:port`, `http://host:port` or `https://host:port`) and, for
    https, how to talk to it: its certificate must be of the cluster's CA (`tls_dir`'s ca.pem), and the process
    presents its own (cert.pem, key.pem)."""
    scheme, separator, rest = address.partition("://")
    if not separator:
        scheme, rest = "http", address
    host, port = split_host_port(rest)
    if scheme == "http":
        return host, port, None
    if scheme != "https":
        raise SystemExit(f"--consul {address}: the scheme must be http or https")
    if tls_dir is None:
        raise SystemExit(f"--consul {address} needs --tls-dir: its {CA_FILE} is the CA Consul's certificate must be of")
    from discovery.consul import ConsulHttps

    return host, port, ConsulHttps(str(tls_dir / CA_FILE), str(tls_dir / CERT_FILE), str(tls_dir / KEY_FILE))
