"""The convergence checker under faults: a real cluster, a randomized workload, real faults, then proof.

    python -m devtools.chaos --seed 7 --orders 2000 --duration 90 --clients 4 \\
        --faults kill,stop,partition,sequencer,consul,replay --workdir .chaos/seed-7

It starts Consul, the Sequencer and 3 nodes (each node in its own network namespace when that is
possible, so partitions are real), drives several concurrent clients against every node (limit,
market, IOC, FOK and post-only orders, cancels and amends; every new order with a unique
client_order_id; ambiguous answers retried with the same id), injects faults on a schedule derived
from the seed, lets the cluster settle and then checks:

- every node reports the same last sequence and checksum for every market, equal to the Sequencer's;
- a fresh engine replaying the Sequencer's log reproduces those checksums and every answer the nodes
  gave to clients (trades included);
- every acknowledged order is in the log exactly once, every order definitely refused (INVALID_ARGUMENT,
  ABORTED, NOT_FOUND) is not, every ambiguous one (DEADLINE_EXCEEDED, UNAVAILABLE) at most once;
- no process died except those the checker killed, and no log holds "Traceback" or "CRITICAL";
- what each fault promises (others keep trading, UNAVAILABLE while the Sequencer is gone, resumption,
  re-registration in Consul, forged broadcasts refused).

The seed fixes the workload of every client and the fault schedule, and is printed first, so a failing
run is reproduced by running it again with the same seed (thread timing still varies between runs).
The whole run has a time limit (--time-limit; default the duration + the settle timeout + 3 minutes): past
it the clients and faults stop and the run fails with the violation "time limit exceeded".
Exit status: 0 if nothing was violated, 1 otherwise (every violation is printed), 2 on a setup error.

The parts: records.py (the ledger: what was sent and how it ended, Config, Report), workload.py (the client
threads), faults.py and replays.py (the fault schedule and each fault kind), monitor.py (unexpected deaths,
progress lines), checks.py (settle and the final checks), run.py (wiring them together), __main__.py (CLI).
"""

from devtools.chaos.records import FAULT_KINDS, Config, Report
from devtools.chaos.run import make_cluster, print_summary, run_chaos

__all__ = ["FAULT_KINDS", "Config", "Report", "make_cluster", "print_summary", "run_chaos"]
