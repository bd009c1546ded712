"""The checkpoint converter's command line (`python convert/torch_to_flax.py`, a thin wrapper).

The conversion is `stablesam_jax.convert`; `--verify` runs `tools.official.compare_with_official`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from flax import nnx

from ..builder import build_sam
from ..checkpoint import CheckpointError, save
from ..convert import convert_state_dict, load_torch_state_dict
from ..modeling.sam import SAM_VARIANTS
from ..tools.official import OfficialSamUnavailable, compare_with_official


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="torch_to_flax.py", description=__doc__ or "Convert an official SAM checkpoint."
    )
    parser.add_argument("--model-type", required=True, choices=sorted(SAM_VARIANTS))
    parser.add_argument("--checkpoint", required=True, help="official PyTorch .pth file")
    parser.add_argument("--output", required=True, help="directory to write (Orbax)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--verify", action="store_true", help="compare with official PyTorch SAM")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    start = time.time()
    try:
        state_dict = load_torch_state_dict(args.checkpoint)
        # Shapes only: the conversion plan needs no real target arrays.
        abstract = nnx.eval_shape(lambda: build_sam(args.model_type))
        flat = convert_state_dict(state_dict, abstract, source=args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = {
        "kind": "sam",
        "model_type": args.model_type,
        "source": os.path.basename(args.checkpoint),
    }
    out = save(args.output, flat, meta, force=args.force)
    n = sum(int(np.prod(v.shape)) for v in flat.values())
    print(
        f"converted {len(state_dict)} tensors ({n:,} weights) of {args.checkpoint} -> {out} "
        f"in {time.time() - start:.1f}s: every source key used, every target filled, "
        "every shape equal"
    )
    if args.verify:
        try:
            diffs = compare_with_official(args.model_type, state_dict, out)
        except OfficialSamUnavailable as e:
            print(f"error: --verify needs the official package: {e}", file=sys.stderr)
            return 1
        for k, v in diffs.items():
            print(f"verify {k}: {v:.3e}")
        if max(diffs.values()) > 1e-4:
            print("error: the converted model differs from the official one", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
