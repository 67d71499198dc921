"""The replicated log's parts (HA mode), split by job the way Patroni splits its HA loop; the face the gate
sees (`LogBackend`) is `sequencer.replicated.ReplicatedLog`, which is all of them:

* ``records``: the keys in the store, the head and batch values, the per-market state of this replica;
* ``base``: the state every part shares and how a part posts to the gate (on its event loop);
* ``standby``: a standby follows the heads, archives each committed batch and hands it to the gate;
* ``election``: the lock and its session: take it when free and current, renew it, probe, step down;
* ``commit``: the leader's fenced transactions, one in flight per market, with unknown-outcome resolution.

Each part builds on the one before it (standby, election, commit), never on one after. May import what
``sequencer`` may (``sequencer/__init__.py``).
"""
