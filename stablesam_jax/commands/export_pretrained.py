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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.commands.export_pretrained",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--checkpoint", required=True, help="a 'sam' Orbax checkpoint directory")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    args = parser.parse_args(argv)
    try:
        info = pack_checkpoint(args.checkpoint, args.out, args.dtype)
    except (ValueError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({info['bytes'] / 1e6:.1f} MB): {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
