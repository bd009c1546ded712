"""Cold vs cached process start with the persistent compilation cache.

    python -m stablesam_jax.commands.cache_bench --bench [--model-type vit_t] [--workload amg]

runs the same workload in two fresh processes sharing an empty cache and prints JSON with the
first-call (compile + run) and steady-state times of each: the second process shows the cached
start.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..tools import cache_bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stablesam_jax.commands.cache_bench")
    parser.add_argument("--bench", action="store_true", help="cold vs cached process start")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-type", default="vit_t")
    parser.add_argument("--workload", choices=cache_bench.WORKLOADS, default="predictor")
    parser.add_argument("--points-per-side", type=int, default=16, help="for --workload amg")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    if args.child:
        result = cache_bench.run_workload(
            args.model_type, args.workload, args.cache_dir, args.points_per_side
        )
        print(json.dumps(result))
        return 0
    if args.bench:
        report = cache_bench.benchmark(
            args.model_type, args.workload, args.cache_dir, args.points_per_side
        )
        print(json.dumps(report, indent=2))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
