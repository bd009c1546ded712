"""Packs a trained SAM checkpoint into the demo's small weight file.

  python -m stablesam_jax.commands.export_pretrained --checkpoint WORKDIR/export/sam \
      --out stablesam_jax/pretrained/vit_demo_sam.npz

WORKDIR is the workdir of `python -m stablesam_jax.train --config train/configs/demo_pretrain.py`.
Float weights are stored as float16 (half the size; the demo computes in float32).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..pretrained import pack_checkpoint
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_file, refuse_overwriting


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.commands.export_pretrained",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--checkpoint", required=True, help="a 'sam' Orbax checkpoint directory")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    check_output_file(args.out, "--out")
    refuse_overwriting(args.out, [args.checkpoint], "--out", inside=True)
    try:
        info = pack_checkpoint(args.checkpoint, args.out, args.dtype)
    except ValueError as error:  # an unusable checkpoint, or weights beyond the --dtype range
        raise UsageError(str(error)) from error
    print(f"wrote {args.out} ({info['bytes'] / 1e6:.1f} MB): {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
