"""The checkpoint converter's command line (`python convert/torch_to_flax.py`, a thin wrapper).

The conversion is `stablesam_jax.convert`; `--verify` runs `tools.official.compare_with_official`.
Exit status: 0 converted (and verified), 2 a usage error (an unreadable or incomplete .pth, the
wrong --model-type, an existing output: the message says what to fix), 1 --verify found the
converted model different from the official one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
from flax import nnx

from ..builder import build_sam
from ..checkpoint import save
from ..convert import convert_state_dict, dropped_keys, load_torch_state_dict
from ..modeling.sam import SAM_VARIANTS
from ..tools.official import (
    OfficialSamUnavailable,
    compare_with_official,
    import_official_modeling,
)
from ..tools.official_hq import compare_with_official_hq, import_official_hq
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_dir, refuse_overwriting


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="torch_to_flax.py", description=__doc__ or "Convert an official SAM checkpoint."
    )
    parser.add_argument("--model-type", required=True, choices=sorted(SAM_VARIANTS))
    parser.add_argument("--checkpoint", required=True, help="official PyTorch .pth file")
    parser.add_argument("--output", required=True, help="directory to write (Orbax)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--verify", action="store_true", help="compare with official PyTorch SAM")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    refuse_overwriting(args.output, [args.checkpoint], "--output", inside=True)
    check_output_dir(args.output, "--output")
    if os.path.exists(args.output) and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite it")
    if importlib.util.find_spec("torch") is None:
        raise UsageError("reading a .pth needs PyTorch: pip install 'stablesam-jax[convert]'")
    config = SAM_VARIANTS[args.model_type]
    # HQ-SAM and TinyViT are checked against the official `segment-anything-hq` package.
    hq_package = config.hq or config.tiny_vit is not None
    if args.verify:
        try:  # now, not after the conversion has written its output
            import_official_hq() if hq_package else import_official_modeling()
        except OfficialSamUnavailable as e:
            raise UsageError(f"--verify needs the official package: {e}") from e
    start = time.time()
    state_dict = load_torch_state_dict(args.checkpoint)
    # Shapes only: the conversion plan needs no real target arrays.
    abstract = nnx.eval_shape(lambda: build_sam(args.model_type))
    flat = convert_state_dict(state_dict, abstract, source=args.checkpoint)
    meta = {
        "kind": "sam",
        "model_type": args.model_type,
        "source": os.path.basename(args.checkpoint),
    }
    out = save(args.output, flat, meta, force=args.force)
    n = sum(int(np.prod(v.shape)) for v in flat.values())
    dropped = dropped_keys(state_dict, abstract)
    if dropped:
        reasons = sorted(set(dropped.values()))
        print(f"dropped {len(dropped)} tensors nothing uses: {', '.join(reasons)}")
    print(
        f"converted {len(state_dict)} tensors ({n:,} weights) of {args.checkpoint} -> {out} "
        f"in {time.time() - start:.1f}s: every source key used, every target filled, "
        "every shape equal"
    )
    if args.verify:
        compare = compare_with_official_hq if hq_package else compare_with_official
        diffs = compare(args.model_type, state_dict, out)
        for k, v in diffs.items():
            print(f"verify {k}: {v:.3e}")
        if max(diffs.values()) > 1e-4:
            # Not a usage error: the conversion itself is wrong.
            print("error: the converted model differs from the official one", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
