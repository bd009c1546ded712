"""Official PyTorch SAM state dicts -> this package's weights, with a completeness proof.

The name map is nearly the identity: our modules keep SAM's attribute names, so a torch key is
our dotted path with `kernel`/`scale`/`embedding` spelled `weight`. Only layouts change: linear
kernels are transposed, conv kernels go OIHW -> HWIO. Conversion fails unless every source key is
used, every target is filled and every shape agrees.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
from flax import nnx

from .checkpoint import (
    CheckpointError,
    describe_mismatch,
    flat_weights,
    is_sam_weight,
    path_name,
)
from .constants import PIXEL_MEAN, PIXEL_STD
from .modeling.common import Conv, ConvTranspose2x2, Linear
from .modeling.sam import SAM_VARIANTS

_RENAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# Non-persistent buffers in the official Sam; tolerated (and checked) if a file carries them.
_OPTIONAL_SOURCE = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}


class ConversionError(CheckpointError):
    pass


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads an official checkpoint safely (`weights_only=True`) into numpy arrays.

    Accepts a bare state dict or one nested under "model" or "state_dict"."""
    import torch  # here, not at the top: torch is optional (the `convert` extra)

    if not os.path.exists(path):
        raise ConversionError(f"checkpoint file {path} does not exist")
    if os.path.isdir(path):
        raise ConversionError(f"{path} is a directory; expected a PyTorch .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise ConversionError(
            f"{path} could not be read as a PyTorch checkpoint; it looks truncated or corrupt "
            f"(torch said: {str(e).splitlines()[0]}). Download it again and compare its size "
            "and checksum with the published ones."
        ) from e
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    for nest in ("model", "state_dict"):
        if isinstance(obj, dict) and nest in obj and isinstance(obj[nest], dict):
            obj = obj[nest]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v.detach().float().numpy() for k, v in obj.items()}


def _targets(model: nnx.Module):
    """{torch key: (our dotted name, layout kind, target shape)} for every SAM weight."""
    nodes = dict(nnx.iter_graph(model))
    out = {}
    for path, var in nnx.iter_graph(model):
        if not (isinstance(var, nnx.Variable) and is_sam_weight(path, var)):
            continue
        parent = nodes[path[:-1]] if path[:-1] in nodes else None
        kind = "copy"
        if path[-1] == "kernel":
            if isinstance(parent, Linear):
                kind = "linear"
            elif isinstance(parent, Conv):
                kind = "conv"
            elif isinstance(parent, ConvTranspose2x2):
                kind = "copy"  # already torch's (in, out, kH, kW)
        torch_key = ".".join([*(str(p) for p in path[:-1]), _RENAMES.get(path[-1], path[-1])])
        out[torch_key] = (path_name(path), kind, tuple(var.shape))
    return out


def _to_torch_layout(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "linear":
        return shape[::-1]
    if kind == "conv":  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return shape


def _from_torch(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(array.T)
    if kind == "conv":
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    return array


def guess_model_type(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Which registered SAM a state dict looks like, from its width and depth."""
    w = shapes.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    depth = len({k.split(".")[2] for k in shapes if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_VARIANTS.items():
        if cfg.encoder_embed_dim == w[0] and cfg.encoder_depth == depth:
            return name
    return None


def check_conversion(
    source_shapes: dict[str, tuple[int, ...]], model: nnx.Module, source: str = "checkpoint"
) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """The completeness proof, on shapes alone: every source key is used, every target weight
    is filled, every shape agrees. Returns the plan {torch key: (our name, layout, shape)}.

    Raises ConversionError listing missing keys, unexpected keys and shape mismatches."""
    targets = _targets(model)
    source_shapes = {k: tuple(v) for k, v in source_shapes.items() if k not in _OPTIONAL_SOURCE}
    missing = sorted(set(targets) - set(source_shapes))
    unexpected = sorted(set(source_shapes) - set(targets))
    mismatched = []
    # Shallow names first: `pos_embed` and `patch_embed` say more than block 7's bias.
    for key in sorted(set(targets) & set(source_shapes), key=lambda k: (k.count("."), k)):
        _, kind, shape = targets[key]
        want = _to_torch_layout(shape, kind)
        if source_shapes[key] != want:
            mismatched.append(f"{key}: checkpoint {source_shapes[key]} vs expected {want}")
    if missing or unexpected or mismatched:
        message = describe_mismatch(source, missing, unexpected, mismatched)
        guess = guess_model_type(source_shapes)
        if guess and guess != getattr(model, "model_type", None):
            message += f"\n  The file looks like a {guess} checkpoint: try --model-type {guess}."
        raise ConversionError(message)
    return targets


def convert_state_dict(
    state_dict: dict[str, np.ndarray], model: nnx.Module, source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Maps an official state dict onto `model`'s SAM weights: {our dotted name: array}."""
    for key, expected in _OPTIONAL_SOURCE.items():
        if key in state_dict:
            value = np.asarray(state_dict[key]).reshape(-1)
            if not np.allclose(value, expected):
                raise ConversionError(f"{source}: {key} is {value.tolist()}, SAM uses {expected}")
    plan = check_conversion({k: np.shape(v) for k, v in state_dict.items()}, model, source)
    return {name: _from_torch(state_dict[key], kind) for key, (name, kind, _) in plan.items()}


def to_torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The inverse map (for tests and for users going back to PyTorch)."""
    flat = flat_weights(model)
    out = {}
    for key, (name, kind, _) in _targets(model).items():
        a = flat[name]
        if kind == "linear":
            a = a.T
        elif kind == "conv":
            a = a.transpose(3, 2, 0, 1)
        out[key] = np.ascontiguousarray(a)
    return out
