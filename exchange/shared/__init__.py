"""What the processes (node, Sequencer, tools) and the client share, and nothing of either.

* ``markets``: a market's trading rules (``MarketConfig``) and the enums they speak in (pure; the engine
  re-exports them).
* ``wire``: service names, metadata headers, the cluster's own RPCs, gRPC channel and server options.
* ``tls``: the cluster's mutual-TLS files and credentials (``--tls-dir``).

``exchange.errors`` (the one error hierarchy and its gRPC status codes) is shared too; it keeps its public
path, since traders import it.

Allowed imports (tests/unit/test_layout.py checks them): the standard library, grpc, protobuf, the
generated stubs ``exchange.v1``, ``exchange.errors`` and this package. Never the engine, the node, the
client, the Sequencer or discovery; ``tls.consul_endpoint`` (used by the processes only) imports
``discovery.consul`` inside the function.
"""
