"""Model construction: `build_sam`, `build_stable_sam` and the `sam_model_registry`.

A checkpoint is a converted (Orbax) directory or an official PyTorch `.pth` file; a `.pth` is
converted in memory with the completeness proof and cached (`convert.load_official`), so only
its first load needs torch. With a checkpoint that fills every weight, the model is built
abstractly (`nnx.eval_shape`) and filled, skipping the random initialization.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
from flax import nnx

from . import checkpoint as ckpt
from . import convert
from .modeling.mask_decoder_hq import is_hq_path
from .modeling.plugins import PluginConfig
from .modeling.sam import SAM_VARIANTS, Sam

# How a wrong model type is corrected, in the builder's words.
_BUILDER_HINT = 'use sam_model_registry["{0}"] or build_sam("{0}", checkpoint=...)'


def _config(model_type: str):
    if model_type not in SAM_VARIANTS:
        looks_like_file = str(model_type).endswith((".pth", ".pt")) or os.path.exists(model_type)
        raise ValueError(
            f"unknown model_type {model_type!r}; choose from {sorted(SAM_VARIANTS)}"
            + (
                ". The first argument is the model type: build_sam('vit_h', checkpoint=...) "
                "(the official build_sam(checkpoint=...) is vit_h)"
                if looks_like_file
                else ""
            )
        )
    return SAM_VARIANTS[model_type]


def _read_weights(checkpoint: str, model_type: str, abstract: Sam) -> tuple[dict, dict]:
    """(flat weights, metadata) of a converted directory or an official .pth file."""
    if os.path.isfile(checkpoint):
        return convert.load_official(checkpoint, abstract, model_type, hint=_BUILDER_HINT)
    return ckpt.load(checkpoint)


def _is_filled(model: Sam) -> bool:
    leaves = jax.tree_util.tree_leaves(nnx.state(model))
    return not any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def _check_meta(meta: dict, directory: str, model_type: str, kinds: tuple[str, ...]) -> None:
    if meta.get("kind") not in kinds:
        raise ckpt.CheckpointError(
            f"{directory} is a {meta.get('kind')!r} checkpoint; expected one of {kinds}"
            + (
                " (plugin weights go in `plugins=`, SAM weights in `checkpoint=`)"
                if meta.get("kind") in ("sam", "plugins")
                else ""
            )
        )
    if meta.get("model_type") not in (None, model_type):
        raise ckpt.CheckpointError(
            f"{directory} holds {meta['model_type']} weights, but model_type={model_type!r} was "
            f"asked for: use model_type={meta['model_type']!r}"
        )


def build_sam(
    model_type: str = "vit_h",
    checkpoint: str | None = None,
    *,
    dtype=None,
    attention_impl: str = "reference",
    seed: int = 0,
    plugin_config: PluginConfig | None = None,
    scan_blocks: bool = False,
) -> Sam:
    """SAM of a registered size: random weights without `checkpoint`, else those of a converted
    directory or of an official PyTorch .pth file (converted on the first load and cached beside
    the file or in the user cache: `convert.load_official`; the first load needs torch).

    dtype: compute dtype (None = float32, the parity setting; jnp.bfloat16 for speed). Weights
    stay float32 either way. attention_impl: "reference" (the official op order) or a fast path
    ("fast" picks the best attention kernel for the device; see `image_encoder.ATTENTION_IMPLS`).
    scan_blocks: run the encoder blocks as `lax.scan` (same math; see `ImageEncoderViT`)."""
    config = _config(model_type)

    def make() -> Sam:
        return Sam(
            config,
            rngs=nnx.Rngs(seed),
            dtype=dtype,
            attention_impl=attention_impl,
            plugin_config=plugin_config,
            model_type=model_type,
            scan_blocks=scan_blocks,
        )

    if checkpoint is None:
        return make()
    checkpoint = os.fspath(checkpoint)
    model = nnx.eval_shape(make)
    flat, meta = _read_weights(checkpoint, model_type, model)
    _check_meta(meta, checkpoint, model_type, ("sam", "stable_sam"))
    if plugin_config is not None and meta["kind"] != "stable_sam":
        model = make()  # fresh plugins need their initializer; the SAM weights are replaced
    _fill(model, flat, meta["kind"], checkpoint)
    if not _is_filled(model):  # a variable that no checkpoint holds: initialize for real
        model = make()
        _fill(model, flat, meta["kind"], checkpoint)
    return model


def _fill(model: Sam, flat: dict, kind: str, source: str) -> None:
    sam_names = ckpt.weight_names(model, ckpt.is_sam_weight)
    sam_flat = flat if kind == "sam" else {k: flat[k] for k in flat if k in sam_names}
    ckpt.load_flat_weights(model, sam_flat, ckpt.is_sam_weight, source)
    if kind == "stable_sam" and model.plugin_config is not None:
        plugin_flat = {k: v for k, v in flat.items() if k not in sam_flat}
        ckpt.load_flat_weights(model, plugin_flat, ckpt.is_plugin_weight, source)


def build_stable_sam(
    model_type: str = "vit_h",
    checkpoint: str | None = None,
    plugins: str | None = None,
    *,
    dtype=None,
    attention_impl: str = "reference",
    seed: int = 0,
    plugin_seed: int | None = None,
    scan_blocks: bool = False,
    **options,
) -> Sam:
    """SAM with Stable-SAM's DSP and DRP plugins.

    checkpoint: converted SAM weights (or a merged "stable_sam" export); plugins: a plugin
    checkpoint written by training or `save_plugins`. Its stored plugin options are used unless
    overridden in `options` (any `PluginConfig` field: dsp_layers, offset_scale, sample, use_drp,
    drp_hidden_dim). `seed` initializes SAM's weights when there is no checkpoint, `plugin_seed`
    the fresh plugins (PluginConfig.seed). Building never changes a SAM weight: with fresh plugins
    the model's outputs equal SAM's."""
    plugin_meta = None
    if plugins is not None:
        plugin_meta = ckpt.read_meta(plugins)
        _check_meta(plugin_meta, plugins, model_type, ("plugins", "stable_sam"))
    elif checkpoint is not None and not os.path.isfile(checkpoint):  # a .pth holds no plugins
        meta = ckpt.read_meta(checkpoint)
        if meta.get("kind") == "stable_sam":
            plugin_meta = meta
    stored = dict((plugin_meta or {}).get("plugin_config", {}))
    unknown = set(options) - {f.name for f in dataclasses.fields(PluginConfig)}
    if unknown:
        raise TypeError(f"unknown Stable-SAM options {sorted(unknown)}")
    if plugin_seed is not None:
        options["seed"] = plugin_seed
    plugin_config = PluginConfig(**{**stored, **options})
    model = build_sam(
        model_type,
        checkpoint,
        dtype=dtype,
        attention_impl=attention_impl,
        seed=seed,
        plugin_config=plugin_config,
        scan_blocks=scan_blocks,
    )
    if plugins is not None:
        flat, _ = ckpt.load(plugins)
        ckpt.load_flat_weights(model, flat, ckpt.is_plugin_weight, plugins)
    return model


def sam_base_type(model_type: str) -> str:
    """The plain SAM variant an HQ-SAM variant is built on (`hq_vit_l` -> `vit_l`): the same
    encoder and SAM decoder, without HQ-SAM's own modules."""
    config = _config(model_type)
    base = model_type.removeprefix("hq_")
    if not config.hq or SAM_VARIANTS.get(base) != dataclasses.replace(config, hq=False):
        raise ValueError(
            f"{model_type!r} is not an HQ-SAM variant (hq_vit_b/l/h, hq_vit_tiny, ...)"
        )
    return base


def load_sam_into_hq(model: Sam, checkpoint: str) -> None:
    """Writes a plain SAM checkpoint (`sam_base_type` of the model's type: a converted directory
    or an official .pth) into HQ-SAM `model`, every SAM weight checked; HQ-SAM's own modules keep
    their initialization, which is how HQ-SAM's training starts."""
    base = sam_base_type(model.model_type)
    abstract = nnx.eval_shape(lambda: Sam(SAM_VARIANTS[base], rngs=nnx.Rngs(0), model_type=base))
    flat, meta = _read_weights(os.fspath(checkpoint), base, abstract)
    _check_meta(meta, os.fspath(checkpoint), base, ("sam", "stable_sam"))
    sam_names = ckpt.weight_names(abstract, ckpt.is_sam_weight)
    flat = {k: v for k, v in flat.items() if k in sam_names}
    ckpt.load_flat_weights(
        model, flat, lambda p, v: ckpt.is_sam_weight(p, v) and not is_hq_path(p), checkpoint
    )


def _meta(model: Sam, kind: str) -> dict:
    meta: dict[str, object] = {"kind": kind, "model_type": model.model_type}
    if model.plugin_config is not None and kind != "sam":
        meta["plugin_config"] = dataclasses.asdict(model.plugin_config)
    return meta


def save_sam(model: Sam, directory: str, *, force: bool = False) -> str:
    return ckpt.save(
        directory, ckpt.flat_weights(model, ckpt.is_sam_weight), _meta(model, "sam"), force=force
    )


def save_plugins(model: Sam, directory: str, *, force: bool = False) -> str:
    if model.plugin_config is None:
        raise ValueError("this model has no Stable-SAM plugins")
    flat = ckpt.flat_weights(model, ckpt.is_plugin_weight)
    return ckpt.save(directory, flat, _meta(model, "plugins"), force=force)


def save_merged(model: Sam, directory: str, *, force: bool = False) -> str:
    """One self-contained checkpoint with SAM and plugin weights (the merged export)."""
    flat = ckpt.flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    kind = "stable_sam" if model.plugin_config is not None else "sam"
    return ckpt.save(directory, flat, _meta(model, kind), force=force)


sam_model_registry = {name: functools.partial(build_sam, name) for name in SAM_VARIANTS} | {
    "default": functools.partial(build_sam, "vit_h")
}
# The official module's per-size builders (`build_sam_vit_h(checkpoint=...)`).
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
