"""Weights on disk: Orbax directories holding a flat `{name: array}` dict plus JSON metadata.

Names are the model's attribute paths joined with dots (`mask_decoder.iou_token.embedding`), so a
file can be read, diffed and grepped without this package. Three kinds of checkpoint:
"sam" (SAM weights only), "plugins" (Stable-SAM plugin weights only, about 330 KB) and
"stable_sam" (both, the merged export). Orbax writes into a temporary directory and renames it
when complete, so a crash never leaves a half-written checkpoint under the final name.

Orbax stores no checksum, so `save` writes a sha256 digest of every array into the metadata
("digests") and `load` checks every array against it: a damaged file raises CheckpointError
naming the array, instead of loading a changed weight. Checkpoints written before digests load
with one `UnverifiedCheckpointWarning`.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

# The weight filters live beside the variable types they test; imported here so that
# `checkpoint.is_sam_weight` / `checkpoint.is_plugin_weight` keep working.
from .modeling.common import is_plugin_weight, is_sam_weight
from .utils.digest import DIGEST_ALGORITHM, array_digests

FORMAT_VERSION = 1
KINDS = ("sam", "plugins", "stable_sam")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested model; the message says why."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written without array digests: it loads, but damage would go unnoticed."""


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
        # set_value, not `var[...] =`: it also fills a model built abstractly (nnx.eval_shape).
        var.set_value(jax.numpy.asarray(flat[name], dtype=var.dtype))


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
    """Writes an Orbax checkpoint directory atomically, with a sha256 digest of every array in
    its metadata; refuses to overwrite unless `force`."""
    if meta.get("kind") not in KINDS:
        raise ValueError(f"meta['kind'] must be one of {KINDS}")
    directory = os.path.abspath(directory)
    flat = {k: np.asarray(v) for k, v in flat.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        **meta,
        "digest_algorithm": DIGEST_ALGORITHM,
        "digests": array_digests(flat),
    }
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
    """Returns (flat weights as numpy arrays, metadata), every array checked against the digest
    stored with it (`verify_digests`)."""
    meta = read_meta(directory)
    directory = os.path.abspath(directory)
    advice = repair_advice(directory, meta)
    try:
        weights = restore_item(directory, "weights")
    except Exception as e:  # noqa: BLE001 - tensorstore raises several types
        raise CheckpointError(
            f"{directory}: weights could not be read ({read_error(e)}); the checkpoint is "
            f"damaged or incomplete. {advice}"
        ) from e
    flat = {k: np.asarray(v) for k, v in weights.items()}
    verify_digests(flat, meta.get("digests"), directory, advice)
    return flat, meta


def read_error(error: BaseException) -> str:
    """The first line of the innermost cause: tensorstore's own message ("OUT_OF_RANGE: Error
    reading ... in OCDBT database at ..."), not Orbax's wrapper with its spec dump."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def repair_advice(directory: str, meta: Mapping) -> str:
    """What to do about a damaged checkpoint: re-convert a converted one, else rewrite or copy."""
    if meta.get("source"):
        return (
            f"Re-convert it from {meta['source']}: python convert/torch_to_flax.py --model-type "
            f"{meta.get('model_type', 'MODEL_TYPE')} --checkpoint {meta['source']} --output "
            f"{directory} --force (or download / copy it again)."
        )
    return (
        "Write it again (save_sam / save_plugins / save_merged, or the training run's export) "
        "or download / copy it again from where it came from."
    )


def verify_digests(
    flat: Mapping[str, np.ndarray], digests: Mapping[str, str] | None, source: str, advice: str
) -> None:
    """Raises CheckpointError naming `source` and the first array whose sha256 differs from the
    digest written with it (or the arrays without one); warns once when there are no digests."""
    if digests is None:
        warnings.warn(
            f"{source} holds no array digests (written by an older stablesam-jax), so damage to "
            "it cannot be detected; save it again to add them.",
            UnverifiedCheckpointWarning,
            stacklevel=3,
        )
        return
    if set(flat) != set(digests):
        odd = sorted(set(flat) ^ set(digests))
        raise CheckpointError(
            f"{source}: the stored digests and the arrays disagree about {len(odd)} names "
            f"({', '.join(odd[:5])}): the checkpoint is damaged or was edited. {advice}"
        )
    bad = [k for k, v in array_digests(flat).items() if v != digests[k]]
    if bad:
        also = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{source}: array {bad[0]!r}{also} does not match the {DIGEST_ALGORITHM} digest "
            f"written with it: the file is damaged (a changed byte on disk or in a copy), so "
            f"nothing was loaded. {advice}"
        )


class _SettledReads(ocp.type_handlers.TypeHandler):
    """An Orbax type handler that reads each array on its own and waits for every read before
    raising the first error.

    Orbax reads a checkpoint's arrays in one `asyncio.gather` on an event loop that it closes when
    the restore returns. When one read fails (a damaged file), that gather raises at once while
    tensorstore's other reads are still in flight; each of them later completes into the closed
    loop and prints an "Event loop is closed" traceback from a tensorstore thread. Gathering with
    `return_exceptions=True` leaves no read pending when the error propagates."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        # Orbax reads handler internals (e.g. the array metadata store) by attribute.
        if name == "_inner":  # not set yet (a copy in the making): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def typestr(self):
        return self._inner.typestr()

    async def metadata(self, infos):
        return await self._inner.metadata(infos)

    async def serialize(self, values, infos, args=None):
        return await self._inner.serialize(values, infos, args)

    def finalize(self, directory):
        return self._inner.finalize(directory)

    async def deserialize(self, infos, args=None):
        args = [None] * len(infos) if args is None else list(args)
        results = await asyncio.gather(
            *[
                self._inner.deserialize([info], None if arg is None else [arg])
                for info, arg in zip(infos, args)
            ],
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result[0] for result in results]


def settled_type_handlers():
    """Orbax's standard type handlers, each reading through `_SettledReads`."""
    types = (int, float, bytes, np.number, np.ndarray, jax.Array, str)
    return ocp.type_handlers.create_type_handler_registry(
        *[(t, _SettledReads(ocp.type_handlers.get_type_handler(t))) for t in types]
    )


def restore_item(directory: str, name: str, abstract=None):
    """One pytree item (written by `StandardSave`) of an Orbax checkpoint directory, read through
    `settled_type_handlers` so that a failed read raises with no read left pending. `abstract`
    (a pytree of `jax.ShapeDtypeStruct` with shardings) restores into those shapes and
    shardings; without it the arrays come back as they were saved."""
    registry = settled_type_handlers()
    handler = ocp.CompositeCheckpointHandler(
        **{name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry)}
    )
    if abstract is None:
        args = ocp.args.PyTreeRestore()
    else:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        args = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)
    with ocp.Checkpointer(handler) as ckptr:
        return ckptr.restore(directory, args=ocp.args.Composite(**{name: args}))[name]


def _check_directory(directory: str) -> None:
    if not os.path.exists(directory):
        raise CheckpointError(f"checkpoint {directory} does not exist")
    if not os.path.isdir(directory):
        name = os.path.basename(directory)
        # The official files are named sam_vit_h_*.pth etc.; the builder reads the real sizes.
        model_type = next((t for t in ("vit_h", "vit_l", "vit_b") if t in name), "MODEL_TYPE")
        raise CheckpointError(
            f"{directory} is a file, not a converted checkpoint directory. If it is an official "
            f"PyTorch .pth file, build_sam({model_type!r}, checkpoint=...) and "
            "sam_model_registry read it directly (converted once, then cached), or convert it: "
            f"python convert/torch_to_flax.py --model-type {model_type} --checkpoint "
            f"{directory} --output ckpt/sam_{model_type}"
        )
