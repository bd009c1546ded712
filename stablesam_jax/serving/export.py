"""Exports a model as two serialized `jax.export` artifacts for serving without this package.

    python -m stablesam_jax.export --model-type vit_b --checkpoint CKPT [--plugins P] --out DIR

writes to DIR:
  encoder.jaxexport   f(weights, pixels f32[b, S, S, 3]) -> features f32[b, g, g, C]
                      (pixels normalized and zero-padded like `Sam.preprocess`; b symbolic)
  decoder.jaxexport   f(weights, image_embeddings f32[1, g, g, C], point_coords f32[n, p, 2],
                        point_labels i32[n, p], boxes f32[n, 4], box_valid bool[n],
                        mask_input f32[n, 4g, 4g], mask_valid bool[n])
                      -> (low_res_logits f32[n, 4, 4g, 4g], iou_predictions f32[n, 4])
                      (prompt count n and points per prompt p symbolic; the fixed-shape prompt
                      path `encode_padded`, so one artifact serves points, boxes, masks and any
                      mix; output 0 is the single-mask output, 1..3 the multimask outputs)
  encoder_weights.npz, decoder_weights.npz   {dotted name: array}
  manifest.json       sizes, preprocessing constants, checksums, versions

Weights are a separate argument, not baked in: a vit_h encoder's 2.5 GB of constants would
exceed the 2 GB protobuf limit of a serialized module, constant folding makes compiles slow and
doubles memory, and a separate file lets one artifact serve any weights of the same architecture
(a retrained plugin set, say) and lets a decoder-only client skip the encoder's weights.
`stablesam_jax.serving` loads and runs the artifacts with only jax and numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import __version__
from ..constants import PIXEL_MEAN, PIXEL_STD
from ..modeling.sam import Sam, decode_padded_prompts
from .runtime import (
    DECODER_FILE,
    DECODER_WEIGHTS_FILE,
    ENCODER_FILE,
    ENCODER_WEIGHTS_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    MANIFEST_FILE,
    weights_digest,
)

DEFAULT_PLATFORMS = ("cpu", "cuda")


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat_state(node) -> tuple[nnx.GraphDef, dict[str, np.ndarray], list[str], object]:
    """Splits a module (or tuple of modules) into (graphdef, {dotted name: array}, names in
    leaf order, treedef), so an exported function can take the weights as a plain dict."""
    graphdef, state = nnx.split(node)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = []
    for path, _ in leaves:
        keys = [_key_name(k) for k in path]
        if keys and keys[-1] == "value":
            keys = keys[:-1]
        names.append(".".join(keys))
    if len(set(names)) != len(names):
        raise RuntimeError("weight names collide after flattening; cannot export")
    weights = {n: np.asarray(jax.device_get(v)) for n, (_, v) in zip(names, leaves)}
    return graphdef, weights, names, treedef


def _rebuild(graphdef, names, treedef, weights: dict):
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, [weights[n] for n in names]))


def _spec(weights: dict) -> dict:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}


def encoder_function(model: Sam):
    """(fn(weights, pixels) -> features, weights dict) for the image encoder."""
    graphdef, weights, names, treedef = _flat_state(model.image_encoder)

    def encode(w, pixels):
        return _rebuild(graphdef, names, treedef, w)(pixels)

    return encode, weights


def decoder_function(model: Sam):
    """(fn(weights, embeddings, prompts...) -> (low_res [n, 4, L, L], iou [n, 4]), weights)."""
    graphdef, weights, names, treedef = _flat_state(
        {"prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
    )

    def decode(
        w, image_embeddings, point_coords, point_labels, boxes, box_valid, mask_input, mask_valid
    ):
        modules = _rebuild(graphdef, names, treedef, w)
        low_res, iou, _ = decode_padded_prompts(
            modules["prompt_encoder"],
            modules["mask_decoder"],
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            box_valid,
            mask_input,
            mask_valid,
            multimask_output=None,
        )
        return low_res, iou

    return decode, weights


def export_model(
    model: Sam,
    out_dir: str,
    *,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    force: bool = False,
    extra_manifest: dict | None = None,
) -> dict:
    """Writes the two artifacts, their weights and manifest.json into out_dir; returns the
    manifest. Refuses to overwrite existing artifacts unless `force`."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    existing = [
        f
        for f in (MANIFEST_FILE, ENCODER_FILE, DECODER_FILE)
        if os.path.exists(os.path.join(out_dir, f))
    ]
    if existing and not force:
        raise FileExistsError(f"{out_dir} already holds {existing}; pass force=True (--force)")
    cfg = model.config
    grid = cfg.image_embedding_size
    low_res = 4 * grid
    (b,) = jax.export.symbolic_shape("b")
    n, p = jax.export.symbolic_shape("n, p")
    f32 = jnp.float32

    encode, enc_weights = encoder_function(model)
    enc = jax.export.export(jax.jit(encode), platforms=platforms)(
        _spec(enc_weights), jax.ShapeDtypeStruct((b, cfg.img_size, cfg.img_size, 3), f32)
    )
    decode, dec_weights = decoder_function(model)
    dec = jax.export.export(jax.jit(decode), platforms=platforms)(
        _spec(dec_weights),
        jax.ShapeDtypeStruct((1, grid, grid, cfg.prompt_embed_dim), f32),
        jax.ShapeDtypeStruct((n, p, 2), f32),
        jax.ShapeDtypeStruct((n, p), jnp.int32),
        jax.ShapeDtypeStruct((n, 4), f32),
        jax.ShapeDtypeStruct((n,), jnp.bool_),
        jax.ShapeDtypeStruct((n, low_res, low_res), f32),
        jax.ShapeDtypeStruct((n,), jnp.bool_),
    )
    files = {}
    for artifact, weights, art_file, w_file in (
        (enc, enc_weights, ENCODER_FILE, ENCODER_WEIGHTS_FILE),
        (dec, dec_weights, DECODER_FILE, DECODER_WEIGHTS_FILE),
    ):
        _atomic_write(os.path.join(out_dir, art_file), bytes(artifact.serialize()))
        tmp = os.path.join(out_dir, w_file + ".tmp.npz")
        np.savez(tmp, **weights)
        os.replace(tmp, os.path.join(out_dir, w_file))
        files[art_file] = {"weights": w_file, "weights_sha256": weights_digest(weights)}
    plugin_config = model.plugin_config
    manifest = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "model_type": model.model_type,
        "stable_sam": plugin_config is not None,
        "plugin_config": None if plugin_config is None else dataclasses.asdict(plugin_config),
        "img_size": cfg.img_size,
        "embedding_size": grid,
        "embedding_dim": cfg.prompt_embed_dim,
        "low_res_size": low_res,
        "mask_threshold": float(model.mask_threshold),
        "image_format": model.image_format,
        "pixel_mean": list(PIXEL_MEAN),
        "pixel_std": list(PIXEL_STD),
        "platforms": list(platforms),
        "encoder": {"artifact": ENCODER_FILE, **files[ENCODER_FILE]},
        "decoder": {"artifact": DECODER_FILE, **files[DECODER_FILE]},
        # Embeddings carry this id, so one computed by other encoder weights is refused.
        "encoder_id": files[ENCODER_FILE]["weights_sha256"][:16],
        "jax_version": jax.__version__,
        "stablesam_jax_version": __version__,
        **(extra_manifest or {}),
    }
    _atomic_write(os.path.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
    return manifest


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_for_export(
    model_type: str, checkpoint: str | None, plugins: str | None, dtype=None
) -> Sam:
    from ..builder import build_sam, build_stable_sam

    if plugins is not None or (checkpoint is not None and _is_merged(checkpoint)):
        return build_stable_sam(model_type, checkpoint, plugins, dtype=dtype)
    return build_sam(model_type, checkpoint, dtype=dtype)


def _is_merged(checkpoint: str) -> bool:
    from ..checkpoint import read_meta

    return read_meta(checkpoint).get("kind") == "stable_sam"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stablesam_jax.export", description=__doc__.split("\n\n")[0]
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
        default=",".join(DEFAULT_PLATFORMS),
        help="comma-separated lowering platforms (cpu, cuda, rocm, tpu); default %(default)s",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    args = parser.parse_args(argv)
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    if args.checkpoint is None:
        warnings.warn(
            "no --checkpoint given: exporting RANDOM weights (fine for tests, useless for "
            "serving); convert official weights with convert/torch_to_flax.py first",
            stacklevel=2,
        )
    model = build_for_export(args.model_type, args.checkpoint, args.plugins, dtype=dtype)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    manifest = export_model(
        model,
        args.out,
        platforms=platforms,
        force=args.force,
        extra_manifest={"dtype": args.dtype, "random_weights": args.checkpoint is None},
    )
    print(
        json.dumps(
            {
                "out": os.path.abspath(args.out),
                "model_type": manifest["model_type"],
                "stable_sam": manifest["stable_sam"],
                "platforms": manifest["platforms"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
