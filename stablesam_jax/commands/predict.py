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
import os
import sys
import warnings

import numpy as np
from PIL import Image, ImageDraw

from ..utils.io import atomic_write, load_image
from ..utils.validation import single_prompt, validate_prompts
from ._errors import UsageError, add_debug_flag, command
from ._outputs import check_output_file, image_format, refuse_overwriting

PROG = "python -m stablesam_jax.predict"


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image")
    parser.add_argument("--checkpoint", required=True, help="converted SAM (or merged) directory")
    parser.add_argument("--plugins", help="Stable-SAM plugin checkpoint directory")
    parser.add_argument("--model-type", help="default: read from the checkpoint")
    parser.add_argument("--box", type=parse_box, help="x0,y0,x1,y1")
    parser.add_argument(
        "--point", type=parse_point, action="append", default=[], help="x,y[,label], repeatable"
    )
    parser.add_argument("--out", required=True, help="overlay image to write (.png, .jpg, ...)")
    parser.add_argument("--mask-out", help="also write the binary mask as an image")
    add_debug_flag(parser)
    return parser


def _output_formats(args) -> dict[str, str]:
    """{path: PIL format} of the outputs, checked before anything is loaded."""
    formats = {}
    for flag, path in (("--out", args.out), ("--mask-out", args.mask_out)):
        if path is None:
            continue
        fmt = image_format(path, flag)
        check_output_file(path, flag)
        refuse_overwriting(path, [args.image], flag)
        if any(os.path.realpath(path) == os.path.realpath(other) for other in formats):
            raise UsageError(f"--mask-out and --out both name {path}; give two files")
        refuse_overwriting(path, [args.checkpoint, args.plugins], flag, inside=True)
        formats[path] = fmt
    return formats


def _read_image(path: str) -> np.ndarray:
    """The image, refusing one larger than PIL's decompression-bomb limit by name."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise UsageError(f"image {path} is too large to read safely: {error}") from error
        except (OSError, SyntaxError, ValueError):
            width = height = 0  # load_image names what is wrong with the file
    if limit and width * height > limit:
        raise UsageError(
            f"image {path} is {width}x{height} (WxH), {width * height:,} pixels: more than the "
            f"{limit:,} PIL reads without a decompression-bomb warning; downscale it first"
        )
    return load_image(path)


def _prompt(args):
    coords = labels = None
    if args.point:
        coords = np.asarray([p[:2] for p in args.point], np.float32)
        labels = np.asarray([p[2] for p in args.point], np.int32)
    return coords, labels, args.box


def _build_model(args):
    # Imported here, so `--help` and usage errors answer without loading JAX and flax.
    from ..builder import build_sam, build_stable_sam
    from ..checkpoint import CheckpointError, read_meta
    from ..modeling.sam import SAM_VARIANTS

    if args.model_type is not None and args.model_type not in SAM_VARIANTS:
        raise UsageError(f"--model-type {args.model_type!r}: choose from {sorted(SAM_VARIANTS)}")
    meta = read_meta(args.checkpoint)
    if meta.get("kind") == "plugins":
        raise CheckpointError(
            f"{args.checkpoint} holds Stable-SAM plugin weights only: pass it as --plugins "
            "and give the SAM checkpoint as --checkpoint"
        )
    model_type = args.model_type or meta.get("model_type")
    if args.plugins or meta.get("kind") == "stable_sam":
        return build_stable_sam(model_type, args.checkpoint, plugins=args.plugins)
    return build_sam(model_type, args.checkpoint)


@command
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.box is None and not args.point:
        raise UsageError("give a prompt: --box x0,y0,x1,y1 and/or --point x,y[,label]")
    formats = _output_formats(args)
    image = _read_image(args.image)
    coords, labels, box = _prompt(args)
    # Checked against the image now, before minutes of loading a large model.
    validate_prompts(*single_prompt(coords, labels, box, None)[:3], image.shape[:2])

    from ..predictor import SamPredictor

    predictor = SamPredictor(_build_model(args))
    predictor.set_image(image)
    # One click is ambiguous: let SAM propose three masks and keep the best scored one.
    multimask = box is None and len(args.point) == 1
    masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=multimask)
    best = int(np.argmax(scores))
    mask = masks[best]
    picture = overlay(image, mask, box, args.point)
    atomic_write(args.out, lambda f: picture.save(f, format=formats[args.out]))
    if args.mask_out:
        binary = Image.fromarray(mask.astype(np.uint8) * 255)
        atomic_write(args.mask_out, lambda f: binary.save(f, format=formats[args.mask_out]))
    print(f"wrote {args.out}: {int(mask.sum())} pixels, predicted IoU {float(scores[best]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
