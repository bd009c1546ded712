"""The device check behind the README's GPU table: fast path vs fp32 reference, encoder vs the
official PyTorch SAM, decoder with and without plugins, the plugins train step; JSON + Markdown.

    python -m stablesam_jax.commands.device_check [--out DIR] [--dry-run] [--force] \\
        [--stages fast_check,encoder,decoder,train] [--budget-s 390] [--no-torch]

--out defaults to $OUT, else ./device_check_out. --dry-run: the same code with tiny sizes on the
CPU (vit_t, one timed iteration), a few seconds to a minute. On a GPU machine run it through
`bash bench/device_check.sh`, which installs the carried wheels first
(`stablesam_jax.tools.device_check` says which and why).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

import jax

from ..tools import device_check
from ._errors import UsageError, add_debug_flag, command

PROG = "python -m stablesam_jax.commands.device_check"


def _stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in device_check.STAGES]
    if not stages or unknown:
        raise argparse.ArgumentTypeError(
            f"--stages takes some of {','.join(device_check.STAGES)}, got {text!r}"
        )
    return stages


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "device_check_out")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--stages", type=_stages, default=device_check.STAGES)
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"skip the stages that would start later (default {device_check.Plan.budget_s:g} s)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the official PyTorch SAM")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run's files")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        p.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


@command
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.dry_run:
        # Before any computation starts a backend: the dry run is the CPU's, GPU or not.
        jax.config.update("jax_platforms", "cpu")
    plan = device_check.DRY_RUN if args.dry_run else device_check.Plan()
    changes = {"compare_torch": plan.compare_torch and not args.no_torch}
    if args.budget_s is not None:
        changes["budget_s"] = args.budget_s
    plan = dataclasses.replace(plan, **changes)
    try:
        results = device_check.run(
            plan,
            args.out,
            stages=args.stages,
            command=f"{PROG} {shlex.join(argv)}".rstrip(),
            force=args.force,
            dry_run=args.dry_run,
        )
    except FileExistsError as error:  # an earlier run's files, without --force
        raise UsageError(str(error)) from error
    print(device_check.markdown_table(results))
    print(f"wrote {os.path.join(os.path.abspath(args.out), device_check.JSON_FILE)} and .md")
    failed = [s["stage"] for s in results["stages"] if s["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
