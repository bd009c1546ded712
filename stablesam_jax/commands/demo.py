"""`python -m stablesam_jax.demo`: Stable-SAM's stability gain, end to end, on generated data.

    python -m stablesam_jax.demo --out DIR            # about 10-15 minutes on a 2-core CPU
    python -m stablesam_jax.demo --out DIR --quick    # a 1-2 minute smoke run (CI)
    python -m stablesam_jax.demo --study --out DIR    # paper Tables 2 and 5 + generality
    python -m stablesam_jax.demo --low-shot --out DIR # paper Table 7 at demo scale
    python -m stablesam_jax.demo --oracle --out DIR   # the DSP's ceiling on the demo SAM

What it does and writes: `stablesam_jax.demo`. Settings start from `demo.settings.FULL` (or
`QUICK`); each flag given overrides one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import zipfile

from ..demo.settings import (
    EVAL_SCENE_SEED,
    FULL,
    QUICK,
    ROUTING_CHOICES,
    SCENE_MAX_OBJECTS,
    TRAIN_TARGET_CHOICES,
    DemoSettings,
)
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_dir, is_within


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
    parser.add_argument(
        "--dsp-lr-multiplier", type=float, help="the DSP's lr as a multiple of --learning-rate"
    )
    parser.add_argument(
        "--center-offsets",
        action="store_const",
        const=True,
        help="remove each example's mean offset (no global translation; not the paper's form)",
    )
    parser.add_argument(
        "--padding",
        choices=("zeros", "border"),
        help="what a DSP sample off the map reads: nothing (zeros, default) or the nearest edge cell",
    )
    parser.add_argument(
        "--routing",
        choices=ROUTING_CHOICES,
        help="DRP's sigma: softmax (default; a1 + a2 = s for every prompt) or sigmoid (a1 and a2 "
        "each in (0, s): how much the token reads can differ by prompt)",
    )
    parser.add_argument(
        "--drp-scale-lr-multiplier",
        type=float,
        help="the lr of DRP's scale s as a multiple of --learning-rate",
    )
    parser.add_argument(
        "--train-target",
        choices=TRAIN_TARGET_CHOICES,
        help="which object of a training scene is the target: random (default) or the largest, "
        "the one the evaluation scores",
    )
    parser.add_argument(
        "--scene-family",
        choices=tuple(SCENE_MAX_OBJECTS),
        help="the scenes every demo set is drawn from (default clusters, the family the packaged "
        "SAM was pretrained on; for shapes give --sam-weights pretrained on shapes)",
    )
    parser.add_argument("--occlusion-prob", type=float)
    parser.add_argument("--seed", type=int, help="training and prompt seed")
    parser.add_argument(
        "--eval-seed",
        type=int,
        help=f"scene seed of the evaluation set (default {EVAL_SCENE_SEED}; experiments that "
        "choose settings should use another one, e.g. 4)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    parser.add_argument(
        "--study",
        action="store_true",
        help="instead: DT-SAM, PT-SAM, DSP without and with RTS and Stable-SAM against SAM, on "
        "the held-out scenes and on the other scene family, which no training saw",
    )
    parser.add_argument(
        "--low-shot",
        action="store_true",
        help="instead: PT-SAM, HQ-SAM and Stable-SAM trained on 220 and 440 scenes for 12 "
        "epochs, with SAM (paper Table 7); --quick: 8 scenes, 2 epochs",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="instead: no training; the frozen SAM with its DSP's samples placed by the ground "
        "truth (toward / onto the target, a random control): what the mechanism could gain",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.study + args.low_shot + args.oracle > 1:
        parser.error("--study, --low-shot and --oracle are separate runs: give one of them")

    settings = QUICK if args.quick else FULL
    overrides = {
        field: getattr(args, field)
        for field in (
            "train_scenes",
            "eval_scenes",
            "batch_size",
            "learning_rate",
            "offset_scale",
            "dsp_lr_multiplier",
            "center_offsets",
            "padding",
            "routing",
            "drp_scale_lr_multiplier",
            "train_target",
            "scene_family",
            "occlusion_prob",
            "seed",
            "eval_seed",
        )
        if getattr(args, field) is not None
    }
    for field in ("train_scenes", "eval_scenes", "batch_size"):
        if field in overrides and overrides[field] < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    for field, low, high in (
        ("learning_rate", 0.0, math.inf),
        ("offset_scale", 0.0, math.inf),
        ("dsp_lr_multiplier", 0.0, math.inf),
        ("drp_scale_lr_multiplier", 0.0, math.inf),
        ("occlusion_prob", 0.0, 1.0),
    ):
        value = overrides.get(field)
        if value is not None and not (low <= value <= high and math.isfinite(value)):
            parser.error(f"--{field.replace('_', '-')} must be in [{low:g}, {high:g}], got {value}")
    return args, dataclasses.replace(settings, **overrides)


def _check_paths(args: argparse.Namespace) -> None:
    """The output folder and the SAM weights, before the pipeline starts (and wipes OUT/work)."""
    from .. import pretrained  # loads flax: after parsing, like the pipeline

    out = check_output_dir(args.out, "--out")
    weights = args.sam_weights
    if weights is None:
        weights = str(pretrained.DEMO_SAM_FILE)
    elif not os.path.exists(weights):
        raise UsageError(
            f"--sam-weights {weights} does not exist: give a .npz written by "
            "stablesam_jax.commands.export_pretrained or an Orbax 'sam' checkpoint directory"
        )
    if is_within(weights, os.path.join(out, "work")):
        raise UsageError(
            f"--sam-weights {weights} lies in {os.path.join(out, 'work')}, which the demo "
            "empties first; move the weights or choose another --out"
        )
    if os.path.isdir(weights):
        return
    try:
        pretrained.read_stored(weights)
    except FileNotFoundError as error:  # the packaged file is missing: the message says how
        raise UsageError(str(error)) from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(
            f"--sam-weights {weights} is not a packaged weight file ({error}); write one with "
            "stablesam_jax.commands.export_pretrained"
        ) from error


@command
def main(argv: list[str]) -> int:
    args, settings = _settings(argv)
    _check_paths(args)
    # Imported after parsing: the pipeline loads JAX, the trainer and the evaluator (seconds),
    # which `--help` and a usage error need not wait for.
    if args.study:
        from ..demo.study import run_study

        run_study(args.out, settings, args.sam_weights, draw_figures=not args.no_figures)
        return 0
    if args.low_shot:
        from ..demo.low_shot import EPOCHS, SCENE_COUNTS, run_low_shot

        counts, epochs = ((8,), 2) if args.quick else (SCENE_COUNTS, EPOCHS)
        run_low_shot(args.out, settings, args.sam_weights, counts, epochs)
        return 0
    if args.oracle:
        from ..demo.oracle import run_oracle

        run_oracle(args.out, settings, args.sam_weights)
        return 0
    from ..demo.pipeline import run

    run(args.out, settings, args.sam_weights, draw_figures=not args.no_figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
