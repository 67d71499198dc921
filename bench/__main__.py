"""``python -m bench``: run the benchmark sections, print a table, write ``bench/results.json``.

Progress goes to stderr, the tables to stdout. Sections run in the order of ``SECTIONS``; ``--only NAME``
(repeatable) picks some of them. A new section is a function ``(args) -> dict`` plus a table formatter.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def _engine(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import engine

    result = engine.run(ops_count=args.ops, repeat=args.repeat)
    return result, engine.table(result)


def _cluster(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import cluster_load as cluster

    result = cluster.run(seconds=args.seconds, catch_up_entries=args.catch_up, failovers=args.failovers,
                         engine_ops=args.ops)
    return result, cluster.table(result)


def _ha(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import cluster_load as cluster

    result = cluster.run_ha(seconds=args.seconds)
    return result, cluster.ha_table(result)


def _metrics(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import metrics

    result = metrics.run(seconds=args.seconds)
    return result, metrics.table(result)


def _path(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import cluster_load as cluster

    result = cluster.run_path(seconds=args.seconds)
    return result, cluster.path_table(result)


def _market_data(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import market_data

    result = market_data.run(seconds=args.seconds)
    return result, market_data.table(result)


def _public_streams(args: argparse.Namespace) -> tuple[dict, str]:
    from bench import public_streams

    result = public_streams.run(seconds=args.seconds)
    return result, public_streams.table(result)


# name -> runner returning (JSON-able result, printable table). The cluster section measures the echo-built order
# path beside its cluster, and the HA cluster after it; "path" measures that floor alone, "ha" the HA cluster beside
# an embedded one (neither is part of a default run).
SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict, str]]] = {
    "engine": _engine,
    "cluster": _cluster,
    "metrics": _metrics,
    "path": _path,
    "ha": _ha,
    "market_data": _market_data,
    "public_streams": _public_streams,
}
DEFAULT = ["engine", "cluster", "metrics", "market_data", "public_streams"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000, help="operations in the engine stream")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (best kept)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cluster load level")
    parser.add_argument("--catch-up", type=int, default=100_000, help="log entries a late node must catch up")
    parser.add_argument("--failovers", type=int, default=5, help="HA: SIGKILLs of the leading Sequencer replica")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only this section")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)

    results: dict[str, dict] = {}
    for name in args.only or DEFAULT:
        print(f"bench: section {name}", file=sys.stderr, flush=True)
        result, text = SECTIONS[name](args)
        results[name] = result
        print(text, flush=True)
        print(flush=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"bench: results written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
