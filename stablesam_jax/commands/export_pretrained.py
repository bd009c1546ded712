"""Packs a trained SAM checkpoint into the demo's small weight file.

  python -m stablesam_jax.pretrained.export --checkpoint WORKDIR/export/sam \
      --out stablesam_jax/pretrained/vit_demo_sam.npz

WORKDIR is the workdir of `python -m stablesam_jax.train --config train/configs/demo_pretrain.py`.
Float weights are stored as float16 (half the size; the demo computes in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def export(checkpoint: str, out: str, dtype: str = "float16") -> dict:
    from .. import checkpoint as ckpt
    from ..pretrained import write_npz

    flat, meta = ckpt.load(checkpoint)
    if meta.get("kind") != "sam":
        raise ckpt.CheckpointError(
            f"{checkpoint} is a {meta.get('kind')!r} checkpoint; the demo needs plain SAM weights "
            "(the export of a run with trainable='all' and with_plugins=False)"
        )
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    info = {"kind": "sam", "model_type": meta.get("model_type"), "source": checkpoint}
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        info["train_config"] = {
            key: config.get(key) for key in ("model_type", "trainable", "batch_size", "seed")
        }
        info["train_config"]["num_scenes"] = config.get("data", {}).get("num_scenes")
    metrics_path = os.path.join(workdir, "train_metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            last = rows[-50:]
            info["train_steps"] = rows[-1]["step"]
            info["final_train_iou"] = float(np.mean([r["train_iou"] for r in last]))
            info["final_loss"] = float(np.mean([r["loss"] for r in last]))
    path = write_npz(out, flat, info, dtype=np.dtype(dtype))
    info["bytes"] = os.path.getsize(path)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a 'sam' Orbax checkpoint directory")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    args = parser.parse_args(argv)
    try:
        info = export(args.checkpoint, args.out, args.dtype)
    except (ValueError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({info['bytes'] / 1e6:.1f} MB): {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
