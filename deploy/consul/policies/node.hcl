# An exchange node (exchange-node): registers itself as `peer-server` (with its gRPC health check), finds its
# peers and the Sequencer, reads the account registry, the markets and (HA) the Sequencer leader's record.
service "peer-server" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key_prefix "exchange/accounts/" {
  policy = "read"
}
key "exchange/config/markets" {
  policy = "read"
}
key "exchange/sequencer/leader" {
  policy = "read"
}
