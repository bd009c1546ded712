"""Speed benchmark: image encoder throughput, prompt decoding latency, `set_image` end to end.

    python -m stablesam_jax.commands.bench --model-type vit_h --batch 8 --dtype bfloat16 \\
        [--plugins] [--compare-torch] [--warmup 3] [--iters 10] [--attention-impl fast]
    python -m stablesam_jax.commands.bench --set-image   # vit_b SamPredictor.set_image vs torch

Random weights (speed does not depend on their values). Every result is one JSON line on
stdout with the date, device, software versions and the command that produced it
(`stablesam_jax.tools.bench`, and `stablesam_jax.tools.bench_torch` for the PyTorch side).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shlex
import sys

import jax

from ..modeling import SAM_VARIANTS
from ..modeling.image_encoder import ATTENTION_IMPLS
from ..tools import bench
from ._errors import UsageError, add_debug_flag, command

PROG = "python -m stablesam_jax.commands.bench"


def _prompt_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prompts wants counts like 1,16,64, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--prompts wants positive counts, got {text!r}")
    return counts


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--image-size wants HxW like 480x640, got {text!r}"
        ) from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--image-size wants positive sides, got {text!r}")
    return h, w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Encoder throughput, decoder latency and set_image speed (JSON lines).",
    )
    p.add_argument(
        "--model-type",
        choices=sorted(SAM_VARIANTS),
        default=None,
        help="default vit_h (vit_b with --set-image)",
    )
    p.add_argument("--batch", type=int, default=8, help="encoder batch size")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument(
        "--attention-impl",
        choices=ATTENTION_IMPLS,
        default="fast",
        help="'reference' is the official op order; 'fast' picks the best kernel per device",
    )
    p.add_argument(
        "--scan-blocks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run encoder blocks as lax.scan; default: on a GPU yes, on a CPU no (XLA:CPU "
        "compiles the scanned encoder more slowly than the unrolled one)",
    )
    p.add_argument("--plugins", action="store_true", help="also time decoding with Stable-SAM")
    p.add_argument(
        "--compare-torch",
        action="store_true",
        help="also time the official PyTorch SAM (same config, same device) and print ratios",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument(
        "--prompts",
        type=_prompt_counts,
        default=bench.DEFAULT_PROMPT_COUNTS,
        help="decoder prompt counts, comma separated (default 1,16,64,256)",
    )
    p.add_argument(
        "--parts",
        default="encoder,decoder",
        help="what to time, comma separated: encoder, decoder",
    )
    p.add_argument(
        "--set-image",
        action="store_true",
        help="time SamPredictor.set_image end to end against the official predictor instead",
    )
    p.add_argument("--image-size", type=_image_size, default=(480, 640), help="HxW for --set-image")
    p.add_argument("--seed", type=int, default=0)
    add_debug_flag(p)
    return p


def parse_args(argv) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - {"encoder", "decoder"}:
        p.error(f"--parts takes encoder and/or decoder, got {args.parts!r}")
    args.parts = parts
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--batch and --iters must be >= 1 and --warmup >= 0")
    if args.model_type is None:
        args.model_type = "vit_b" if args.set_image else "vit_h"
    if args.scan_blocks is None:
        args.scan_blocks = jax.default_backend() != "cpu"
    return args


def settings_of(args: argparse.Namespace) -> bench.BenchSettings:
    return bench.BenchSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(bench.BenchSettings)}
    )


@command
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if (args.set_image or args.compare_torch) and importlib.util.find_spec("torch") is None:
        raise UsageError(
            "--set-image and --compare-torch time the official PyTorch SAM: install it with "
            "pip install 'stablesam-jax[dev]'"
        )
    ctx = bench.Context(settings_of(args), f"{PROG} {shlex.join(argv)}".rstrip())
    if args.set_image:
        # torch is optional (the `dev` extra): only this mode and --compare-torch need it.
        from ..tools import bench_torch

        bench_torch.bench_set_image(ctx, args.model_type)
        return 0
    bench.run(ctx, parts=args.parts, plugins=args.plugins, compare_torch=args.compare_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
