"""The Sequencer: the global, per-market, gap-free sequence numbers and the durable log of commands.

* ``main``: the ``exchange-sequencer`` process; ``service``: the gate and the log reader (gRPC);
* ``store``: the durable log (SQLite, WAL, synchronous=FULL, group commit on the event loop).

May import the shared ``exchange`` modules (``cluster``, ``entries``, ``errors``, ``runtime``, ``v1``) and
``discovery``; never ``exchange.node`` or ``exchange.engine``.
"""
