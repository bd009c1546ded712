"""`python -m stablesam_jax.demo`: Stable-SAM's stability gain, end to end, on generated data.

    python -m stablesam_jax.demo --out DIR            # about 10-15 minutes on a 2-core CPU
    python -m stablesam_jax.demo --out DIR --quick    # a 1-2 minute smoke run (CI)

What it does and writes: `stablesam_jax.demo`. Settings start from `demo.settings.FULL` (or
`QUICK`); each flag given overrides one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..demo.settings import EVAL_SCENE_SEED, FULL, QUICK, DemoSettings


def _settings(argv) -> tuple[argparse.Namespace, DemoSettings]:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.demo",
        description="Stable-SAM vs SAM on generated scenes: train the plugins, evaluate, draw.",
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a 1-2 minute smoke run (CI)"
    )
    parser.add_argument(
        "--sam-weights",
        default=None,
        help="SAM weights: a .npz from `stablesam_jax.commands.export_pretrained` or an Orbax 'sam' "
        "checkpoint directory (default: the packaged vit_demo_sam.npz)",
    )
    parser.add_argument("--train-scenes", type=int, help="generated training scenes (one epoch)")
    parser.add_argument("--eval-scenes", type=int, help="held-out evaluation scenes")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--offset-scale", type=float, help="DSP offset scale s_p in cells")
    parser.add_argument("--occlusion-prob", type=float)
    parser.add_argument("--seed", type=int, help="training and prompt seed")
    parser.add_argument(
        "--eval-seed",
        type=int,
        help=f"scene seed of the evaluation set (default {EVAL_SCENE_SEED}; experiments that "
        "choose settings should use another one, e.g. 4)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else FULL
    overrides = {
        field: getattr(args, field)
        for field in (
            "train_scenes",
            "eval_scenes",
            "batch_size",
            "learning_rate",
            "offset_scale",
            "occlusion_prob",
            "seed",
            "eval_seed",
        )
        if getattr(args, field) is not None
    }
    for field in ("train_scenes", "eval_scenes", "batch_size"):
        if field in overrides and overrides[field] < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    return args, dataclasses.replace(settings, **overrides)


def main(argv=None) -> int:
    args, settings = _settings(argv)
    # Imported after parsing: the pipeline loads JAX, the trainer and the evaluator (seconds),
    # which `--help` and a usage error need not wait for.
    from ..demo.pipeline import run

    try:
        run(args.out, settings, args.sam_weights, draw_figures=not args.no_figures)
    except FileNotFoundError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
