"""The chaos checker's command line: `python -m devtools.chaos --seed N ...` (what `make chaos` runs).

Exit status: 0 if nothing was violated, 1 otherwise (every violation is printed), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from pathlib import Path

import devtools.chaos
from devtools.chaos.records import FAULT_KINDS, HA_FAULT_KINDS, TIME_LIMIT_MARGIN, Config
from devtools.chaos.run import make_cluster, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=devtools.chaos.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--orders", type=int, default=0,
                        help="operations to send, spread over the duration (0: as many as the cluster takes)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (faults fall inside)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated subset of {','.join(FAULT_KINDS)} ('' for none); with --ha, of "
                             f"{','.join(HA_FAULT_KINDS)} (default: all of them)")
    parser.add_argument("--ha", action="store_true",
                        help="the Sequencer's HA mode: three Consul servers, two Sequencer replicas on the log "
                             "replicated in Consul, and the faults kill-leader, stall-leader, kill-consul-server")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="logs and data, a new or empty directory (default: a new temp dir)")
    parser.add_argument("--no-netns", action="store_true", help="run the nodes on loopback (no partitions)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="seconds for the whole run, after which it stops and fails (default: the duration "
                             f"+ the settle timeout + {TIME_LIMIT_MARGIN:.0f})")
    parser.add_argument("--snapshot-every", type=int, default=Config.snapshot_every,
                        help="the nodes' --snapshot-every (small, so killed nodes restart from snapshots)")
    parser.add_argument("--snapshot-threshold", type=int, default=Config.snapshot_threshold,
                        help="the nodes' --snapshot-threshold (entries behind from which a peer's snapshot is fetched)")
    args = parser.parse_args(argv)
    kinds = HA_FAULT_KINDS if args.ha else FAULT_KINDS
    faults = tuple(kind for kind in (",".join(kinds) if args.faults is None else args.faults).split(",") if kind)
    unknown = set(faults) - set(kinds)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}{' in HA mode' if args.ha else ''}; choose among "
                     f"{','.join(kinds)}")
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    config = Config(seed=seed, orders=args.orders, duration=args.duration, clients=args.clients, faults=faults,
                    netns=False if args.no_netns else None, time_limit=args.time_limit, ha=args.ha,
                    snapshot_every=args.snapshot_every, snapshot_threshold=args.snapshot_threshold)
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        # A previous run's log would be resumed: its client_order_ids are this run's, so every check would fail.
        parser.error(f"--workdir {args.workdir} is not empty: give a new directory (or remove it)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    cluster = make_cluster(config, workdir)
    try:
        report = run_chaos(config, cluster)
        if not report.ok:
            cluster.dump_tasks()  # every live service logs its asyncio tasks' stacks: where a stuck one waits
    except KeyboardInterrupt:
        print(f"interrupted; logs in {workdir / 'logs'}")
        return 130
    except Exception:
        print(cluster.logs())
        raise
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
    print(f"logs in {workdir / 'logs'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
