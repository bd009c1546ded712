"""Cold vs cached process start with the persistent compilation cache.

    python -m stablesam_jax.commands.cache_bench --bench [--model-type vit_t] [--workload amg]

runs the same workload in two fresh processes sharing an empty cache and prints JSON with the
first-call (compile + run) and steady-state times of each: the second process shows the cached
start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..modeling.sam import SAM_VARIANTS
from ..tools import cache_bench
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_dir


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stablesam_jax.commands.cache_bench")
    parser.add_argument("--bench", action="store_true", help="cold vs cached process start")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-type", default="vit_t", choices=sorted(SAM_VARIANTS))
    parser.add_argument("--workload", choices=cache_bench.WORKLOADS, default="predictor")
    parser.add_argument("--points-per-side", type=int, default=16, help="for --workload amg")
    parser.add_argument(
        "--cache-dir", default=None, help="an empty or new folder (default: a temporary one)"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.points_per_side < 1:
        parser.error(f"--points-per-side must be >= 1, got {args.points_per_side}")
    if args.child:
        result = cache_bench.run_workload(
            args.model_type, args.workload, args.cache_dir, args.points_per_side
        )
        print(json.dumps(result))
        return 0
    if args.bench:
        if args.cache_dir is not None:
            check_output_dir(args.cache_dir, "--cache-dir")
            if os.path.isdir(args.cache_dir) and os.listdir(args.cache_dir):
                raise UsageError(
                    f"--cache-dir {args.cache_dir} is not empty: the first process must start "
                    "cold; give an empty or new folder (or none for a temporary one)"
                )
        report = cache_bench.benchmark(
            args.model_type, args.workload, args.cache_dir, args.points_per_side
        )
        print(json.dumps(report, indent=2))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
