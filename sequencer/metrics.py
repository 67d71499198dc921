"""The Sequencer's Prometheus series (exchange/metrics.py: the endpoint and the rules they follow). The gauges
read at scrape time are `SequencerService.gauges`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from exchange.metrics import SECONDS_BUCKETS, SIZE_BUCKETS

SEQUENCER_ENTRIES = Counter("exchange_sequencer_entries_total", "Log entries numbered (duplicates excluded).",
                            ["market"])
SEQUENCER_COMMIT_SECONDS = Histogram("exchange_sequencer_commit_seconds",
                                     "A granted request's entries: numbered until durable in the log.", ["market"],
                                     buckets=SECONDS_BUCKETS)
SEQUENCER_FSYNC_SECONDS = Histogram("exchange_sequencer_fsync_seconds",
                                    "One write transaction of the embedded log (SQLite, its fsync included; in HA "
                                    "mode of the replica's archive).",
                                    buckets=SECONDS_BUCKETS)
SEQUENCER_BATCH = Histogram("exchange_sequencer_batch_size", "Entries per durable write of the log.",
                            buckets=SIZE_BUCKETS)
LEADER_CHANGES = Counter("exchange_sequencer_leader_changes_total",
                         "Times this replica started leading (the sum over replicas: the cluster's leader changes).")
SESSION_RENEWALS = Counter("exchange_sequencer_session_renewals_total",
                           "Renewals of this replica's Consul session (HA), by result: ok, refused (the session "
                           "ended) or failed (Consul did not answer).", ["result"])
CONSUL_TXN_SECONDS = Histogram("exchange_consul_transaction_seconds",
                               "One Consul transaction committing a batch of the replicated log (HA).",
                               buckets=SECONDS_BUCKETS)
CONSUL_TXN_CONFLICTS = Counter("exchange_consul_transaction_conflicts_total",
                               "Consul transactions of the replicated log refused by a failed check (HA: fenced).")
