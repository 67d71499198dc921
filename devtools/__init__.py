"""The harness for tests, the demo and benchmarks: local clusters of real processes, faults, checkers.

Never imported by the product (`exchange`, `sequencer`, `discovery`) and not packaged into the wheel
(pyproject.toml lists only the product's packages). It may import the product's packages. What lives here:

- `cluster`: the process harness (`Cluster`, `ServiceProcess`, `wait_until`), used by the tests, the
  demo, the bench and the chaos checker; `netns`: network namespaces for real partitions;
- `consul_agent`: a `consul agent -dev` child process; `ports`: free loopback ports;
- `static_registry`: an in-memory discovery Registry for tests;
- `demo`: `python -m devtools.demo up|down|status` (`make cluster-up/-down/-status`);
- `verify`: replays the Sequencer's log through a fresh engine;
- `workload`: the random-order generator of the bench, the chaos checker and the tests;
- `chaos`: the convergence checker under faults (`python -m devtools.chaos`, `make chaos`).
"""
