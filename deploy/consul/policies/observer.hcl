# Read the catalog and health of services: what a client needs to find the nodes (exchange.client), and what a
# web console or Prometheus' Consul service discovery needs. Also the anonymous token's only policy.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
