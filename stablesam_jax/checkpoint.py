"""Weights on disk: Orbax directories holding a flat `{name: array}` dict plus JSON metadata.

Names are the model's attribute paths joined with dots (`mask_decoder.iou_token.embedding`), so a
file can be read, diffed and grepped without this package. Three kinds of checkpoint:
"sam" (SAM weights only), "plugins" (Stable-SAM plugin weights only, about 330 KB) and
"stable_sam" (both, the merged export). Orbax writes into a temporary directory and renames it
when complete, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

# The weight filters live beside the variable types they test; imported here so that
# `checkpoint.is_sam_weight` / `checkpoint.is_plugin_weight` keep working.
from .modeling.common import is_plugin_weight, is_sam_weight

FORMAT_VERSION = 1
KINDS = ("sam", "plugins", "stable_sam")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested model; the message says why."""


def path_name(path) -> str:
    """The dotted name of a model path: ("mask_decoder", "mask_tokens", "embedding") ->
    "mask_decoder.mask_tokens.embedding"; integer parts (list indices) print as digits."""
    return ".".join(str(p) for p in path)


def flat_weights(model: nnx.Module, which: Callable = is_sam_weight) -> dict[str, np.ndarray]:
    """{dotted name: numpy array} for the variables of `model` selected by `which`."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable) and which(path, var):
            out[path_name(path)] = np.asarray(jax.device_get(var[...]))
    return out


def weight_names(model: nnx.Module, which: Callable = is_sam_weight) -> set[str]:
    return {
        path_name(path)
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Variable) and which(path, var)
    }


def load_flat_weights(
    model: nnx.Module, flat: dict[str, np.ndarray], which: Callable, source: str
) -> None:
    """Writes `flat` into the selected variables of `model`, after checking names and shapes.

    Raises CheckpointError naming every missing or unexpected key and every shape mismatch."""
    targets = {
        path_name(path): var
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Variable) and which(path, var)
    }
    missing = sorted(set(targets) - set(flat))
    unexpected = sorted(set(flat) - set(targets))
    mismatched = [
        f"{k}: checkpoint {tuple(np.shape(flat[k]))} vs model {tuple(targets[k].shape)}"
        for k in sorted(set(targets) & set(flat))
        if tuple(np.shape(flat[k])) != tuple(targets[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(describe_mismatch(source, missing, unexpected, mismatched))
    for name, var in targets.items():
        var[...] = jax.numpy.asarray(flat[name], dtype=var[...].dtype)


def load_into(model: nnx.Module, directory: str) -> None:
    """Loads a "sam", "plugins" or "stable_sam" checkpoint's weights into `model` (a `Sam`),
    leaving the weights the checkpoint does not hold as they are.

    A "stable_sam" checkpoint fills the plugins too when `model` has them. Raises CheckpointError
    for another model size, for plugin weights without plugins in `model`, and for any name or
    shape mismatch."""
    flat, meta = load(directory)
    if meta.get("model_type") not in (None, model.model_type):
        raise CheckpointError(
            f"{directory} holds {meta['model_type']} weights but the model is {model.model_type}"
        )
    kind = meta.get("kind")
    if kind == "plugins" or (kind == "stable_sam" and model.plugin_config is not None):
        if model.plugin_config is None:
            raise CheckpointError(f"{directory} holds plugin weights: set with_plugins=True")
        _load_matching(model, flat, is_plugin_weight, directory)
    if kind in ("sam", "stable_sam"):
        _load_matching(model, flat, is_sam_weight, directory)


def _load_matching(model: nnx.Module, flat: dict, which: Callable, source: str) -> None:
    # A merged checkpoint holds both kinds of weight: each filter takes the names it selects.
    names = weight_names(model, which)
    load_flat_weights(model, {k: v for k, v in flat.items() if k in names}, which, source)


def describe_mismatch(source, missing, unexpected, mismatched, limit: int = 12) -> str:
    lines = [f"{source} does not match the model:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            shown = ", ".join(items[:limit]) + (
                f", ... ({len(items)} in all)" if len(items) > limit else ""
            )
            lines.append(f"  {len(items)} {title}: {shown}")
    return "\n".join(lines)


def save(directory: str, flat: dict[str, np.ndarray], meta: dict, *, force: bool = False) -> str:
    """Writes an Orbax checkpoint directory atomically; refuses to overwrite unless `force`."""
    if meta.get("kind") not in KINDS:
        raise ValueError(f"meta['kind'] must be one of {KINDS}")
    directory = os.path.abspath(directory)
    meta = {"format_version": FORMAT_VERSION, **meta}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            directory,
            args=ocp.args.Composite(
                weights=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )
    return directory


def read_meta(directory: str) -> dict:
    directory = os.path.abspath(directory)
    _check_directory(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        try:
            restored = ckptr.restore(
                directory, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:  # noqa: BLE001 - any failure here means "not our checkpoint"
            raise CheckpointError(
                f"{directory} is not a stablesam-jax checkpoint (no readable metadata: {e}). "
                "Convert official PyTorch weights with convert/torch_to_flax.py first."
            ) from e
    return dict(restored["meta"])


def load(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """Returns (flat weights as numpy arrays, metadata)."""
    meta = read_meta(directory)
    directory = os.path.abspath(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        try:
            restored = ckptr.restore(
                directory, args=ocp.args.Composite(weights=ocp.args.StandardRestore())
            )
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{directory}: weights could not be read ({e})") from e
    flat = {k: np.asarray(v) for k, v in restored["weights"].items()}
    return flat, meta


def _check_directory(directory: str) -> None:
    if not os.path.exists(directory):
        raise CheckpointError(f"checkpoint {directory} does not exist")
    if not os.path.isdir(directory):
        raise CheckpointError(
            f"{directory} is a file, not a converted checkpoint directory. If it is an official "
            "PyTorch .pth file, convert it first: python convert/torch_to_flax.py --model-type "
            f"vit_b --checkpoint {directory} --output ckpt/sam_vit_b"
        )
