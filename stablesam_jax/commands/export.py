"""Exports a model as two serialized `jax.export` artifacts for serving without this package.

    python -m stablesam_jax.commands.export --model-type vit_b --checkpoint CKPT \\
        [--plugins P] --out DIR

writes the encoder and decoder artifacts, their weights and manifest.json to DIR
(`stablesam_jax.serving.export`); `stablesam_jax.serving.ExportedSam` runs them with jax, numpy
and PIL only. Prints one JSON line naming what was written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import jax.numpy as jnp

from ..modeling.sam import SAM_VARIANTS
from ..serving import export as export_lib
from ..serving.runtime import DECODER_FILE, ENCODER_FILE, MANIFEST_FILE
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_dir, refuse_overwriting

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.commands.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-type", required=True, choices=sorted(SAM_VARIANTS))
    parser.add_argument("--checkpoint", help="converted SAM (or merged Stable-SAM) checkpoint dir")
    parser.add_argument("--plugins", help="Stable-SAM plugin checkpoint dir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype"
    )
    parser.add_argument(
        "--platforms",
        default=",".join(export_lib.DEFAULT_PLATFORMS),
        help=f"comma-separated lowering platforms ({', '.join(PLATFORMS)}); default %(default)s",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def _platforms(text: str) -> tuple[str, ...]:
    platforms = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in PLATFORMS]
    if not platforms or unknown:
        raise UsageError(
            f"--platforms {text!r}: give one or more of {', '.join(PLATFORMS)}, comma separated"
        )
    return platforms


def _check_out(args: argparse.Namespace) -> None:
    """Before the model is built: the output is a folder, no input, and no earlier export."""
    out = check_output_dir(args.out, "--out")
    refuse_overwriting(out, [args.checkpoint, args.plugins], "--out", inside=True)
    existing = [
        name
        for name in (MANIFEST_FILE, ENCODER_FILE, DECODER_FILE)
        if os.path.exists(os.path.join(out, name))
    ]
    if existing and not args.force:
        raise UsageError(
            f"--out {out} already holds an export ({', '.join(existing)}); pass --force to "
            "replace it, or choose another folder"
        )


@command
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    platforms = _platforms(args.platforms)
    _check_out(args)
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    if args.checkpoint is None:
        warnings.warn(
            "no --checkpoint given: exporting RANDOM weights (fine for tests, useless for "
            "serving); convert official weights with convert/torch_to_flax.py first",
            stacklevel=2,
        )
    model = export_lib.build_for_export(args.model_type, args.checkpoint, args.plugins, dtype=dtype)
    manifest = export_lib.export_model(
        model,
        args.out,
        platforms=platforms,
        force=args.force,
        extra_manifest={"dtype": args.dtype, "random_weights": args.checkpoint is None},
    )
    summary = {
        "out": os.path.abspath(args.out),
        "model_type": manifest["model_type"],
        "stable_sam": manifest["stable_sam"],
        "platforms": manifest["platforms"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
