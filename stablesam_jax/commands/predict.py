"""Segment one image from the command line.

    python -m stablesam_jax.predict photo.jpg --checkpoint ckpt/sam_vit_b \
        [--plugins runs/stable_sam/export/plugins] --box 40,30,300,260 --out overlay.png
    python -m stablesam_jax.predict photo.jpg --checkpoint ckpt/sam_vit_b \
        --point 120,80 --point 200,150,0 --out overlay.png

Points are x,y[,label] in pixels (label 1 = foreground, the default; 0 = background). Writes an
overlay PNG (and, with --mask-out, the binary mask) and prints the predicted IoU.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, ImageDraw

from ..utils.io import ImageReadError, load_image


class UsageError(argparse.ArgumentTypeError, ValueError):
    pass


def parse_box(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise UsageError(f"--box must be x0,y0,x1,y1 numbers, got {text!r}") from e
    if len(values) != 4:
        raise UsageError(f"--box must have 4 numbers x0,y0,x1,y1, got {text!r}")
    return np.asarray(values, np.float32)


def parse_point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise UsageError(f"--point must be x,y or x,y,label, got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError as e:
        raise UsageError(f"--point must be numbers x,y[,label], got {text!r}") from e
    if label not in (0, 1):
        raise UsageError(f"point label must be 1 (foreground) or 0 (background), got {label}")
    return x, y, label


def overlay(image, mask, box=None, points=()) -> Image.Image:
    out = image.astype(np.float32).copy()
    color = np.array([30, 144, 255], np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * color
    pil = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=2)
    for x, y, label in points:
        fill = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=fill, outline=(255, 255, 255))
    return pil


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image")
    parser.add_argument("--checkpoint", required=True, help="converted SAM (or merged) directory")
    parser.add_argument("--plugins", help="Stable-SAM plugin checkpoint directory")
    parser.add_argument("--model-type", help="default: read from the checkpoint")
    parser.add_argument("--box", type=parse_box, help="x0,y0,x1,y1")
    parser.add_argument(
        "--point", type=parse_point, action="append", default=[], help="x,y[,label], repeatable"
    )
    parser.add_argument("--out", required=True, help="overlay PNG to write")
    parser.add_argument("--mask-out", help="also write the binary mask as a PNG")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:  # argparse wraps type errors itself; keep this for direct calls
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.box is None and not args.point:
        print("error: give a prompt: --box x0,y0,x1,y1 and/or --point x,y[,label]", file=sys.stderr)
        return 2

    # Imported after parsing, so `--help` and usage errors answer without loading JAX and flax.
    from ..builder import build_sam, build_stable_sam
    from ..checkpoint import CheckpointError, read_meta
    from ..predictor import SamPredictor

    try:
        image = load_image(args.image)
        meta = read_meta(args.checkpoint)
        if meta.get("kind") == "plugins":
            raise CheckpointError(
                f"{args.checkpoint} holds Stable-SAM plugin weights only: pass it as --plugins "
                "and give the SAM checkpoint as --checkpoint"
            )
        model_type = args.model_type or meta.get("model_type")
        if args.plugins or meta.get("kind") == "stable_sam":
            model = build_stable_sam(model_type, args.checkpoint, plugins=args.plugins)
        else:
            model = build_sam(model_type, args.checkpoint)
        predictor = SamPredictor(model)
        predictor.set_image(image)
        coords = labels = None
        if args.point:
            coords = np.asarray([p[:2] for p in args.point], np.float32)
            labels = np.asarray([p[2] for p in args.point], np.int32)
        # One click is ambiguous: let SAM propose three masks and keep the best scored one.
        multimask = args.box is None and len(args.point) == 1
        masks, scores, _ = predictor.predict(coords, labels, args.box, multimask_output=multimask)
    except (ImageReadError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    best = int(np.argmax(scores))
    mask = masks[best]
    overlay(image, mask, args.box, args.point).save(args.out)
    if args.mask_out:
        Image.fromarray(mask.astype(np.uint8) * 255).save(args.mask_out)
    print(f"wrote {args.out}: {int(mask.sum())} pixels, predicted IoU {float(scores[best]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
