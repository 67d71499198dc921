"""The exchange node: a full replica of every book, taking client orders and applying everyone's in order.

* ``main``: the ``exchange-node`` process (flags, start-up catch-up, registration, graceful stop);
* ``replica``: applies sequenced entries strictly in order; the books and what is derived from the log;
* ``snapshots``: the replica's snapshots, for a peer (GetSnapshot) and on the node's disk, where it restarts from;
* ``sequencing``: one pipeline per market: the gate batcher, catch-up and gap filling;
* ``sequencer_link``: the ``Sequencer`` and ``Peers`` shapes and the Sequencer's gRPC link; ``broadcast``: the peers'
  (``PeerSet``); both found via ``discovery``;
* ``auth``: who is calling: API keys against the account registry, and each account's rate limit
  (``AccessControl``);
* ``market_data``: the trade tape, candles and ticker the replica keeps, by Sequencer time;
* ``metrics``: the node's counters (GetStatus) and its Prometheus series;
* ``service``: the ExchangeNode servicer, made of ``orders`` (order entry), ``trader_view`` (a trader's own
  orders: GetOrder, ListOrders, StreamOrders), ``reads`` (books, events, status), ``book_stream`` (StreamBook),
  ``market_data_rpcs`` (trades, candles, ticker) and ``peer_rpcs`` (the cluster's own calls);
  ``lifecycle``: SYNCING / SERVING / STOPPING;
* ``order_messages``: request validation and protobuf <-> engine conversions.

May import ``exchange.engine``, ``exchange.shared``, the processes' ``exchange`` modules and ``discovery``;
never ``sequencer`` or ``exchange.client`` (devtools/layout.py checks it).
"""
