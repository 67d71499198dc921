"""p2p-exchange: the exchange node, the matching engine, the client library and what the processes share.

* ``exchange.client``: the client library for traders' programs (sync and asyncio), see README "Python client".
* ``exchange.engine``: the pure matching engine (no I/O, clocks or randomness); imports nothing else here.
* ``exchange.node``: the exchange node service (replica, sequencing pipeline, gRPC adapters).
* ``exchange.v1``: the stubs generated from ``proto/`` by the package build (never edited by hand); the
  .proto files themselves ship in the package too: ``proto_dir()``.
* Shared by both services and the tools: ``cluster`` (service names, cluster token, market spec, flags),
  ``entries`` (how log entries are signed), ``errors`` (the one hierarchy of failures and their gRPC status
  codes, for servers and clients), ``runtime`` (server options, health, reflection, graceful stop), and
  ``cli`` (``exchange-cli``).

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
