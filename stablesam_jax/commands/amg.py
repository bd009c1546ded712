"""The automatic mask generator from the command line: its speed, and SAM vs Stable-SAM.

    python -m stablesam_jax.commands.amg bench [--model-type vit_demo] [--image-size 256]
    python -m stablesam_jax.commands.amg compare [--checkpoint CKPT] [--plugins P] [--single-mask]

`bench` times `SamAutomaticMaskGenerator.generate` on a generated 4:3 scene; `compare` runs SAM
and Stable-SAM under the generator's single-click grid prompts on generated scenes with known
instances. Both print one JSON object. Without --checkpoint the weights are random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

from ..builder import build_sam, build_stable_sam
from ..data.scenes import generate_scene
from ..modeling.sam import SAM_VARIANTS
from ..tools.amg_report import benchmark, robustness_report
from ..utils.compilation_cache import enable_compilation_cache
from ..utils.validation import MIN_IMAGE_SIDE
from ._errors import add_debug_flag, command
from ._outputs import check_output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stablesam_jax.commands.amg")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("bench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--model-type", default="vit_demo", choices=sorted(SAM_VARIANTS))
        p.add_argument("--checkpoint", help="converted SAM checkpoint (random weights if absent)")
        p.add_argument("--points-per-side", type=int, default=32)
        p.add_argument("--points-per-batch", type=int, default=64)
        p.add_argument("--pred-iou-thresh", type=float, default=0.88)
        p.add_argument("--stability-score-thresh", type=float, default=0.95)
        p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
        p.add_argument("--compilation-cache", help="persistent compilation cache directory")
        p.add_argument(
            "--single-mask",
            action="store_true",
            help="one mask per point (multimask_output=False), e.g. for the demo SAM, whose "
            "pretraining fits only the single-mask output",
        )
        add_debug_flag(p)
    bench = sub.choices["bench"]
    bench.add_argument("--image-size", type=int, default=None, help="long side (default img_size)")
    bench.add_argument("--repeats", type=int, default=3)
    compare = sub.choices["compare"]
    compare.add_argument("--plugins", help="Stable-SAM plugin checkpoint (fresh plugins if absent)")
    compare.add_argument("--num-scenes", type=int, default=4)
    compare.add_argument("--scene-size", type=int, default=256)
    compare.add_argument(
        "--scene-seed",
        type=int,
        default=0,
        help="generated scenes (the demo trains on seeds 1, 2 and 5 and evaluates on 3)",
    )
    args = parser.parse_args(argv)
    _check_ranges(sub.choices[args.command], args)
    return args


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    minimums = {"points_per_side": 1, "points_per_batch": 1, "repeats": 1, "num_scenes": 1}
    minimums.update(image_size=MIN_IMAGE_SIDE, scene_size=MIN_IMAGE_SIDE)
    for field, low in minimums.items():
        value = getattr(args, field, None)
        if value is not None and value < low:
            parser.error(f"--{field.replace('_', '-')} must be >= {low}, got {value}")
    for field in ("pred_iou_thresh", "stability_score_thresh"):
        value = getattr(args, field)
        if not value <= 1.0:  # NaN too; <= 0 is allowed: it switches the filter off
            parser.error(f"--{field.replace('_', '-')} must be <= 1, got {value}")


@command
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.compilation_cache:
        check_output_dir(args.compilation_cache, "--compilation-cache")
        enable_compilation_cache(args.compilation_cache)
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    kwargs = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        multimask_output=not args.single_mask,
    )
    info = {
        "command": args.command,
        "model_type": args.model_type,
        "random_weights": args.checkpoint is None,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "dtype": args.dtype,
        **kwargs,
    }
    t0 = time.perf_counter()
    sam = build_sam(args.model_type, args.checkpoint, dtype=dtype)
    info["build_s"] = round(time.perf_counter() - t0, 2)
    if args.command == "bench":
        size = args.image_size or sam.img_size
        image = generate_scene(0, size=size)["image"][: size * 3 // 4]  # a 4:3 synthetic scene
        info["image_shape"] = list(image.shape)
        info.update(benchmark(sam, image, repeats=args.repeats, **kwargs))
    else:
        stable = build_stable_sam(args.model_type, args.checkpoint, args.plugins, dtype=dtype)
        info["plugins"] = args.plugins or "fresh (identity at initialization)"
        info["num_scenes"], info["scene_size"] = args.num_scenes, args.scene_size
        info["scene_seed"] = args.scene_seed
        info["report"] = robustness_report(
            {"sam": sam, "stable_sam": stable},
            num_scenes=args.num_scenes,
            scene_size=args.scene_size,
            seed=args.scene_seed,
            **kwargs,
        )
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
