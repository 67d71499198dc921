"""The Sequencer: the global, per-market, gap-free sequence numbers and the durable log of commands.

* ``main``: the ``exchange-sequencer`` process; ``gate``: the sequencing gate (numbering,
  roles); ``service``: its gRPC servicer and the log reader;
* ``log``: the log's contract, what the gate needs of a backend (``LogBackend``) and what a replicated backend
  tells the gate (``RoleCallbacks``); the client_order_id window is ``exchange.dedup`` (shared with the nodes);
* ``store``: the embedded log (SQLite, WAL, synchronous=FULL, group commit on the event loop), also each HA
  replica's local archive; ``replicated``: the log replicated in Consul (HA mode), made of
  the parts in ``ha`` (election and session, the fenced commit, the standby's follow and archive);
* ``metrics``: the Sequencer's Prometheus series.

May import ``exchange.shared`` (wire constants, TLS, ``MarketConfig``), the processes' ``exchange`` modules
(``cluster``, ``commands``, ``dedup``, ``entry_signing``, ``errors``, ``runtime``, ``v1``...) and ``discovery``;
never ``exchange.node``, ``exchange.engine`` or ``exchange.client`` (devtools/layout.py checks it, and
tests/unit/test_layout.py that ``import sequencer.main`` loads no engine). Consul itself is reached only through
``discovery.ReplicatedStore`` (``discovery.consul_kv.ConsulKV``).

Design (docs/ha.md):

* **Interface.** The gate numbers commands in memory and hands each group of fresh entries to
  ``LogBackend.append``, whose future resolves only once they are durable; it answers only then, and reads
  (ReadLog, GetSequence, the entries an answer carries) never pass the durable end. ``recover`` gives the last
  durable number and the dedup window at start. Both backends keep this contract (one test suite,
  tests/unit/log_contract.py, runs on both). The embedded one leads from the start; the replicated one drives
  the gate's role through ``RoleCallbacks`` (``lead``, ``pause``, ``step_down``, ``adopt``), and every change of role
  starts a new term: an answer prepared in one term is never sent in another.
* **Commit point** (replicated). One Consul transaction per group-commit batch of a market: check-session on the
  leader key (fencing), compare-and-set of the market's head (gap-free), the batch as one value, the delete of
  what fell out of the bounded tail. An unknown outcome is resolved by a consistent read of the head, else by
  sending the same transaction again (its compare-and-set lets one commit at most), before anything else is
  answered. A refused transaction (409) deposes the leader.
* **Election and fencing.** Replicas contend for the lock ``exchange/sequencer/leader`` with a session that
  carries their own gRPC health check and the agent's serfHealth (lock-delay 1 s, TTL 10 s renewed every 2.5 s).
  Only a replica whose archive has caught up contends. Fencing does not rely on timing: every write of a leader
  is a transaction that checks its session, so a deposed or paused leader can write nothing. A leader stops
  numbering when Consul has not confirmed it for TTL/2, and leaves only when Consul refuses a fenced transaction
  (a batch, or a probe of check-session alone); it then lets its writes settle, forgets the numbers it assigned
  past them (never answered) and follows.
* **Standby.** Follows the heads with blocking queries in rounds, reads the new batches in one read, appends them
  to its archive and hands them to the gate (``adopt``: the recent entries and the dedup window a leader needs).
  Takeover: the lock, a consistent read of every head, what the archive lacks, then lead. What Consul no longer
  keeps is copied from another replica's archive (ReadLog).
* **Nodes** send the gate to the replica the lock names (if it passes its check) and follow a change of leader
  by themselves: requests in flight are cut short and sent again to the new leader, where the origin check
  answers a repeat of committed commands with a stale answer carrying them, so an order is numbered once.
"""
