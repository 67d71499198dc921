"""p2p-exchange: the exchange node, the matching engine, the client library and what the processes share.

The folders, from the floor up; each may import the ones before it, never one after (devtools/layout.py
and tests/unit/test_layout.py check it):

* ``exchange.shared`` (wire constants, TLS, ``MarketConfig`` and its enums) and ``errors`` (the one hierarchy
  of failures and their gRPC status codes), with the stubs ``exchange.v1`` generated from ``proto/`` by the
  package build (never edited by hand; the .proto files ship in the package too: ``proto_dir()``): what the
  processes and the client share. The standard library, grpc and protobuf only.
* ``exchange.engine``: the pure matching engine (no I/O, clocks or randomness); imports only
  ``exchange.shared.markets`` of the product.
* ``exchange.client``: the client library for traders' programs (sync and asyncio), see README "Python
  client"; imports only the floor.
* The processes' shared modules, directly here: ``cluster`` (cluster token, signed records, market spec),
  ``cluster_config`` (the markets in Consul KV), ``accounts``, ``commands`` (what may enter the log),
  ``dedup``, ``entry_signing`` (how log entries are signed), ``runtime`` (servers, channels, health, reflection,
  graceful stop), ``metrics`` and ``grpc_metrics``; and the CLIs ``cli`` (``exchange-cli``) and
  ``cli_market_data``. They may import the floor, the engine and ``discovery`` (the CLIs also the client);
  never the node or the Sequencer.
* ``exchange.node``: the exchange node service (replica, sequencing pipeline, gRPC adapters); never the
  Sequencer or the client.
* ``exchange.web``: the web console (``exchange-web``), a client of the cluster: the floor, the client, the
  processes' shared modules and ``discovery``; never the engine, the node or the Sequencer.

The Sequencer lives in the top-level ``sequencer`` package and discovery behind ``discovery``; neither
service imports the other's package. The test and demo harness lives in ``devtools/`` and is not packaged.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def proto_dir() -> Path:
    """The include root of the API's .proto files (``<root>/exchange/v1/exchange.proto`` ...), for grpcurl
    (``-import-path``), protoc in other languages, or any tool that wants the schema.

    An installed package carries them as ``exchange/proto/``; a source checkout (an editable install) has
    them at ``proto/`` beside the package."""
    shipped = _HERE / "proto"
    return shipped if shipped.is_dir() else _HERE.parent / "proto"
