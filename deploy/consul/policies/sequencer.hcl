# A Sequencer replica (exchange-sequencer): registers itself as `sequencer`, defines the cluster's markets if it is
# the first process to (exchange/config/markets), and in HA mode holds the leader lock with a session of its own
# and keeps the replicated log (exchange/sequencer/, exchange/log/).
service "sequencer" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key "exchange/config/markets" {
  policy = "write"
}
key_prefix "exchange/sequencer/" {
  policy = "write"
}
key_prefix "exchange/log/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
