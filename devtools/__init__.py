"""The harness for tests, the demo and benchmarks: local clusters of real processes, faults, checkers.

Never imported by the product (`exchange`, `sequencer`, `discovery`) and not packaged into the wheel
(pyproject.toml lists only the product's packages). It may import the product's packages. What lives here:

- `cluster`: the process harness (`Cluster`, `ServiceProcess`, `wait_until`), used by the tests, the
  demo, the bench and the chaos checker; `netns`: network namespaces for real partitions;
- `consul_agent`: real Consul agents (a dev agent, or HA's three servers and client agents) as child
  processes; `consul_acl`: their ACLs (a token per role) and gossip encryption; `ports`: free loopback ports;
- `prometheus`: a real Prometheus with the repository's configuration, for the demo and the tests;
- `certs`: a cluster's certificates for mutual TLS; `auth_channels`: channels whose calls carry an API key;
- `static_registry`: an in-memory discovery Registry for tests;
- `repo_hygiene`: checks that the tracked tree holds nothing of one machine (`python3 -m devtools.repo_hygiene`);
- `layout`: the product's layout rules (what each folder may import, file and function lengths:
  `python3 -m devtools.layout`);
- `unasync`: writes the sync client (exchange/client/sync.py) from the asyncio one (`make client-sync`);
- `demo`: `python -m devtools.demo up|down|status` (`make cluster-up/-down/-status`);
- `verify`: replays the Sequencer's log through a fresh engine;
- `workload`: the random-order generator of the bench, the chaos checker and the tests;
- `chaos`: the convergence checker under faults (`python -m devtools.chaos`, `make chaos`).
"""
