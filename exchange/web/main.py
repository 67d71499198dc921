"""`exchange-web`: the web console of a cluster (README "Web console").

A client of the cluster like any other (Consul for discovery, the nodes' public gRPC API): it holds no secret of
the cluster and no state of its own. It listens on loopback by default and refuses any other address without TLS
(`--tls-dir`: the same files as every process, its certificate then also serves HTTPS): API keys cross it.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys

from aiohttp import web

from exchange.cluster_common import add_consul_arguments, is_loopback
from exchange.runtime import configure_logging
from exchange.shared.tls import CERT_FILE, KEY_FILE, TlsConfig, add_tls_argument, consul_endpoint, load_tls
from exchange.shared.wire import split_host_port
from exchange.web.feed import FeedConfig
from exchange.web.server import make_app

log = logging.getLogger("web")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exchange-web", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HTTP listen address host:port (default "
                        "127.0.0.1:8080); beyond loopback only with --tls-dir")
    add_consul_arguments(parser)  # its token needs to read services and nodes only (the observer's policy)
    parser.add_argument("--log-level", default=os.environ.get("EXCHANGE_LOG_LEVEL", "INFO"))
    add_tls_argument(parser)
    args = parser.parse_args(argv)
    host, _ = split_host_port(args.listen)
    if not is_loopback(host) and args.tls_dir is None:
        parser.error(f"refusing to serve {args.listen} without TLS: API keys would cross the network in the clear; "
                     "give --tls-dir (the cluster's ca.pem and this server's cert.pem and key.pem) or listen on "
                     "127.0.0.1")
    return args


def https_context(tls: TlsConfig) -> ssl.SSLContext:
    """HTTPS with the process's certificate and key (browsers: no client certificate is asked for)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.directory / CERT_FILE, tls.directory / KEY_FILE)
    return context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("web", args.log_level)
    tls = load_tls(args.tls_dir)
    consul_endpoint(args.consul, args.tls_dir)  # refuses an https Consul without the CA to check it with
    host, port = split_host_port(args.listen)
    config = FeedConfig(consul=args.consul, consul_token=args.consul_token, tls=tls)
    scheme = "http" if tls is None else "https"
    shown = f"[{host}]" if ":" in host else host
    web.run_app(make_app(config), host=host, port=port, ssl_context=None if tls is None else https_context(tls),
                shutdown_timeout=2, print=lambda _: log.info("exchange-web serving %s://%s:%d/ (Consul %s)", scheme,
                                                              shown, port, args.consul), access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
