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

from ..serving import export as export_lib


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.commands.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-type", required=True, help="vit_h, vit_l, vit_b, vit_demo, vit_t")
    parser.add_argument("--checkpoint", help="converted SAM (or merged Stable-SAM) checkpoint dir")
    parser.add_argument("--plugins", help="Stable-SAM plugin checkpoint dir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype"
    )
    parser.add_argument(
        "--platforms",
        default=",".join(export_lib.DEFAULT_PLATFORMS),
        help="comma-separated lowering platforms (cpu, cuda, rocm, tpu); default %(default)s",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    if args.checkpoint is None:
        warnings.warn(
            "no --checkpoint given: exporting RANDOM weights (fine for tests, useless for "
            "serving); convert official weights with convert/torch_to_flax.py first",
            stacklevel=2,
        )
    model = export_lib.build_for_export(args.model_type, args.checkpoint, args.plugins, dtype=dtype)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
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
