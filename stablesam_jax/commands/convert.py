"""The checkpoint converter's command line (`convert/torch_to_flax.py` is a thin wrapper)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from ..modeling.sam import SAM_VARIANTS


def verify(model_type: str, state_dict, output: str, seed: int = 0) -> dict:
    """Official torch SAM vs the converted checkpoint on one generated non-square image."""
    import torch

    from ..builder import build_sam
    from ..predictor import SamPredictor
    from ..tools.official import build_official_sam
    from ..utils.transforms import ResizeLongestSide

    config = SAM_VARIANTS[model_type]
    torch_sam = build_official_sam(config)
    torch_sam.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    jax_sam = build_sam(model_type, checkpoint=output)
    rng = np.random.default_rng(seed)
    h, w = int(config.img_size * 0.75), config.img_size
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    resized = ResizeLongestSide(config.img_size).apply_image(image)
    box = np.array([w * 0.2, h * 0.25, w * 0.7, h * 0.8], np.float32)
    t_box = torch.as_tensor(ResizeLongestSide(config.img_size).apply_boxes(box, (h, w)))
    record = {
        "image": torch.as_tensor(resized).permute(2, 0, 1).float(),
        "original_size": (h, w),
        "boxes": t_box.float()[None],
    }
    embeddings = []  # the official forward's image embedding, caught on its way to the decoder
    hook = torch_sam.image_encoder.register_forward_hook(lambda m, i, o: embeddings.append(o))
    with torch.no_grad():
        (official,) = torch_sam([record], multimask_output=True)
    hook.remove()
    t_emb, t_logits, t_iou = embeddings[0], official["low_res_logits"], official["iou_predictions"]
    predictor = SamPredictor(jax_sam)
    predictor.set_image(image)
    _, j_iou, j_logits = predictor.predict(box=box, multimask_output=True)

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))

    return {
        "embedding_rel_max_diff": rel(t_emb.numpy(), predictor.get_image_embedding()),
        "logits_rel_max_diff": rel(t_logits[0].numpy(), j_logits),
        "iou_rel_max_diff": rel(t_iou[0].numpy(), j_iou),
    }


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

    from flax import nnx

    from ..builder import build_sam
    from ..checkpoint import CheckpointError, save
    from ..convert import convert_state_dict, load_torch_state_dict

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
        from ..tools.official import OfficialSamUnavailable

        try:
            diffs = verify(args.model_type, state_dict, out)
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
