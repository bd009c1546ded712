"""Exports a model as two serialized `jax.export` artifacts for serving without this package.

`export_model(model, DIR)` (the command: `python -m stablesam_jax.commands.export --model-type
vit_b --checkpoint CKPT [--plugins P] --out DIR`) writes to DIR:
  encoder.jaxexport   f(weights, pixels f32[b, S, S, 3]) -> features f32[b, g, g, C]
                      (pixels normalized and zero-padded like `Sam.preprocess`; b symbolic)
  decoder.jaxexport   f(weights, image_embeddings f32[1, g, g, C], point_coords f32[n, p, 2],
                        point_labels i32[n, p], boxes f32[n, 4], box_valid bool[n],
                        mask_input f32[n, 4g, 4g], mask_valid bool[n])
                      -> (low_res_logits f32[n, M, 4g, 4g], iou_predictions f32[n, 4])
                      (prompt count n and points per prompt p symbolic; the fixed-shape prompt
                      path `encode_padded`, so one artifact serves points, boxes, masks and any
                      mix; output 0 is the single-mask output, 1..3 the multimask outputs, and
                      for HQ-SAM (M = 5) 4 the HQ token's mask, which the runtime adds)
  C is the model's embedding width (`SamConfig.embedding_channels`): 256, or for HQ-SAM 256
  plus the early encoder features the encoder appends (manifest `embedding_dim`, `hq`).
  encoder_weights.npz, decoder_weights.npz   {dotted name: array}
  manifest.json       sizes, preprocessing constants, checksums, versions

Platforms (`platforms=`, the command's `--platforms`): any of SUPPORTED_PLATFORMS, default
DEFAULT_PLATFORMS (cpu, cuda, tpu); one artifact holds code for each, and the runtime runs it
on whichever is present. Lowering for a platform needs no such device (tests lower the encoder,
the decoder with the plugins and the train step for tpu and cuda on a CPU); running the artifacts
is tested on a CPU. An encoder whose fast path picks cuDNN's fused attention (bfloat16,
attention_impl="fast" or "folded_cudnn", exported on a GPU host) cannot share one artifact
between cuda and another platform: export it for ("cuda",) alone (on any other platform alone the
encoder traces XLA's attention instead), or build it with attention_impl="bias".

Weights are a separate argument, not baked in: a vit_h encoder's 2.5 GB of constants would
exceed the 2 GB protobuf limit of a serialized module, constant folding makes compiles slow and
doubles memory, and a separate file lets one artifact serve any weights of the same architecture
(a retrained plugin set, say) and lets a decoder-only client skip the encoder's weights.
`stablesam_jax.serving.runtime` loads and runs the artifacts with only jax, numpy and PIL.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import __version__
from ..builder import build_sam, build_stable_sam
from ..checkpoint import path_name, read_meta
from ..constants import PIXEL_MEAN, PIXEL_STD
from ..modeling import ops
from ..modeling.image_encoder import Attention
from ..modeling.sam import Sam, decode_padded_prompts
from ..utils.io import atomic_write
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

# jax.export's platform names ("gpu" is not one: it names CUDA or ROCm).
SUPPORTED_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def _flat_state(node) -> tuple[nnx.GraphDef, dict[str, np.ndarray], list]:
    """Splits a module (or dict of modules) into (graphdef, {dotted name: array}, [(name, path,
    variable)]), so an exported function can take the weights as a plain dict."""
    graphdef, state = nnx.split(node)
    template = [(path_name(path), path, var) for path, var in nnx.to_flat_state(state)]
    if len({name for name, _, _ in template}) != len(template):
        raise RuntimeError("weight names collide after flattening; cannot export")
    weights = {name: np.asarray(jax.device_get(var.get_value())) for name, _, var in template}
    return graphdef, weights, template


def _rebuild(graphdef, template, weights: dict):
    """The module again, its variables holding `weights` (arrays or tracers) by name."""
    flat = [(path, var.replace(weights[name])) for name, path, var in template]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _spec(weights: dict) -> dict:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}


def encoder_function(model: Sam):
    """(fn(weights, pixels) -> features, weights dict) for the image encoder."""
    graphdef, weights, template = _flat_state(model.image_encoder)

    def encode(w, pixels):
        return _rebuild(graphdef, template, w)(pixels)

    return encode, weights


def decoder_function(model: Sam):
    """(fn(weights, embeddings, prompts...) -> (low_res [n, 4, L, L], iou [n, 4]), weights)."""
    graphdef, weights, template = _flat_state(
        {"prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
    )

    def decode(
        w, image_embeddings, point_coords, point_labels, boxes, box_valid, mask_input, mask_valid
    ):
        modules = _rebuild(graphdef, template, w)
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
    check_platforms(model, platforms)
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
        jax.ShapeDtypeStruct((1, grid, grid, cfg.embedding_channels), f32),
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
        atomic_write(os.path.join(out_dir, art_file), bytes(artifact.serialize()))
        atomic_write(os.path.join(out_dir, w_file), lambda f, w=weights: np.savez(f, **w))
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
        "embedding_dim": cfg.embedding_channels,
        # The decoder returns the HQ mask after SAM's four; absent (older exports) means SAM.
        "hq": bool(cfg.hq),
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
    atomic_write(os.path.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=2))
    return manifest


def check_platforms(model: Sam, platforms: tuple[str, ...]) -> None:
    """Raises ValueError, saying what to pass instead, for platforms no artifact can hold."""
    platforms = tuple(platforms)
    unknown = [p for p in platforms if p not in SUPPORTED_PLATFORMS]
    if not platforms or unknown:
        hint = ' ("gpu" is "cuda" or "rocm")' if "gpu" in unknown else ""
        raise ValueError(
            f"platforms={platforms!r}: give one or more of {SUPPORTED_PLATFORMS}{hint}"
        )
    if "cuda" in platforms and len(platforms) > 1 and _traces_cudnn_attention(model):
        raise ValueError(
            f"platforms={platforms!r}: this encoder runs cuDNN's fused attention on this GPU, "
            "whose code lowers for cuda only; export platforms=('cuda',) alone, or build the "
            "model with attention_impl='bias' for one artifact for every platform"
        )


def _traces_cudnn_attention(model: Sam) -> bool:
    # Conservative: SAM's window attention always fits cuDNN's head-dim limit in 16 bits.
    if ops.cudnn_attention_head_dim_limit() == 0:
        return False
    for _, node in nnx.iter_graph(model.image_encoder):
        if not isinstance(node, Attention) or node.attention_impl not in ("fast", "folded_cudnn"):
            continue
        dtype = node.qkv.dtype
        half = dtype is not None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        if node.attention_impl == "folded_cudnn" or half:
            return True
    return False


def build_for_export(
    model_type: str, checkpoint: str | None, plugins: str | None, dtype=None
) -> Sam:
    """SAM, or Stable-SAM when plugins are given or the checkpoint is a merged one."""
    if plugins is not None or (checkpoint is not None and _is_merged(checkpoint)):
        return build_stable_sam(model_type, checkpoint, plugins, dtype=dtype)
    return build_sam(model_type, checkpoint, dtype=dtype)


def _is_merged(checkpoint: str) -> bool:
    return read_meta(checkpoint).get("kind") == "stable_sam"
