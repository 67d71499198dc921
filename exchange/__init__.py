"""p2p-exchange: the exchange node, the matching engine and what the cluster's processes share.

* ``exchange.engine``: the pure matching engine (no I/O, clocks or randomness); imports nothing else here.
* ``exchange.node``: the exchange node service (replica, sequencing pipeline, gRPC adapters).
* ``exchange.v1``: the stubs generated from ``proto/`` (never edited by hand).
* Shared by both services and the tools: ``cluster`` (service names, cluster token, market spec, flags),
  ``entries`` (how log entries are signed), ``errors`` (the gRPC status table), ``runtime`` (server
  options, health, reflection, graceful stop), and ``cli`` (``exchange-cli``).

The Sequencer lives in the top-level ``sequencer`` package and discovery behind ``discovery``; neither
service imports the other's package. The test and demo harness lives in ``devtools/`` and is not packaged.
"""
