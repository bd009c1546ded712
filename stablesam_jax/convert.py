"""Official PyTorch SAM state dicts -> this package's weights, with a completeness proof.

The name map is nearly the identity: our modules keep SAM's attribute names, so a torch key is
our dotted path with `kernel`/`scale`/`embedding` spelled `weight`. Only layouts change: linear
kernels are transposed, conv kernels go OIHW -> HWIO. Conversion fails unless every source key is
used, every target is filled and every shape agrees.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
import warnings
import zipfile

import numpy as np
from flax import nnx

from .checkpoint import (
    CheckpointError,
    describe_mismatch,
    flat_weights,
    is_sam_weight,
    load,
    path_name,
    save,
)
from .constants import PIXEL_MEAN, PIXEL_STD
from .modeling.common import Conv, ConvTranspose2x2, Linear
from .modeling.sam import SAM_VARIANTS

_RENAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# Non-persistent buffers in the official Sam; tolerated (and checked) if a file carries them.
_OPTIONAL_SOURCE = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
# Keys of official TinyViT checkpoints (MobileSAM, HQ-SAM's vit_tiny) that segmentation never
# reads, dropped by name: the ImageNet classifier, BatchNorm's step counters (BatchNorm runs on
# its running statistics) and, should a file hold them, the attention-bias index tables
# (rebuilt from the window size, as the official module does).
_TINY_VIT_DROPPED = {
    r"^image_encoder\.(norm_head|head)\.(weight|bias)$": "TinyViT's classifier head",
    r"\.bn\.num_batches_tracked$": "BatchNorm's step counter",
    r"\.attn\.attention_bias_idxs$": "TinyViT's bias index table (rebuilt)",
}


# The one command that installs what reading a .pth needs (torch==2.13.0, CPU is enough).
TORCH_INSTALL = "pip install 'stablesam-jax[convert]'"
# How a wrong model type is corrected; `{}` is the type the shapes show (the CLI's flag here).
CLI_HINT = "try --model-type {}"


class ConversionError(CheckpointError):
    pass


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads an official checkpoint safely (`weights_only=True`) into numpy arrays.

    Accepts a bare state dict or one nested under "model" or "state_dict"."""
    try:
        import torch  # here, not at the top: torch is optional (the `convert` extra)
    except ImportError as e:
        raise ConversionError(
            f"{path} is a PyTorch checkpoint, and reading it needs torch, which is not "
            f"installed: {TORCH_INSTALL}. Only the first load needs it: the converted weights "
            "are cached (see `stablesam_jax.convert.load_official`)."
        ) from e
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


def dropped_keys(keys, model: nnx.Module) -> dict[str, str]:
    """{source key: why} for the keys of an official checkpoint that `model` has no use for
    (TinyViT's classifier head and BatchNorm counters; none for the ViT models)."""
    config = getattr(model, "config", None)
    if getattr(config, "tiny_vit", None) is None:
        return {}
    return {
        k: why for k in keys for pattern, why in _TINY_VIT_DROPPED.items() if re.search(pattern, k)
    }


def guess_model_type(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Which registered model a state dict looks like: ViT width and depth, or TinyViT stage
    widths and depths, and whether it has HQ-SAM's token."""
    hq = "mask_decoder.hf_token.weight" in shapes
    w = shapes.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return _guess_tiny_vit(shapes, hq)
    depth = len({k.split(".")[2] for k in shapes if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_VARIANTS.items():
        if cfg.encoder_embed_dim == w[0] and cfg.encoder_depth == depth and cfg.hq == hq:
            if cfg.tiny_vit is None:
                return name
    return None


def _guess_tiny_vit(shapes: dict[str, tuple[int, ...]], hq: bool) -> str | None:
    stem = shapes.get("image_encoder.patch_embed.seq.2.c.weight")
    if stem is None:
        return None
    pattern = re.compile(r"^image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[str]] = {}
    for k in shapes:
        m = pattern.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    depths = tuple(len(blocks[i]) for i in sorted(blocks))
    for name, cfg in SAM_VARIANTS.items():
        t = cfg.tiny_vit
        if t is not None and cfg.hq == hq and (t.embed_dims[0], t.depths) == (stem[0], depths):
            return name
    return None


def check_conversion(
    source_shapes: dict[str, tuple[int, ...]],
    model: nnx.Module,
    source: str = "checkpoint",
    hint: str = CLI_HINT,
) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """The completeness proof, on shapes alone: every source key is used or named as dropped
    (`dropped_keys`), every target weight is filled, every shape agrees. Returns the plan
    {torch key: (our name, layout, shape)}.

    Raises ConversionError listing missing keys, unexpected keys and shape mismatches, and the
    model type the shapes show (`hint` formatted with it)."""
    targets = _targets(model)
    skip = set(_OPTIONAL_SOURCE) | set(dropped_keys(source_shapes, model))
    source_shapes = {k: tuple(v) for k, v in source_shapes.items() if k not in skip}
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
        asked = getattr(model, "model_type", None)
        if guess and guess != asked:
            # First: the one line that says what to do, before the lists of keys.
            message = (
                f"{source} holds {guess} weights (from its shapes), not {asked}: "
                f"{hint.format(guess)}.\n{message}"
            )
        raise ConversionError(message)
    return targets


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    model: nnx.Module,
    source: str = "checkpoint",
    hint: str = CLI_HINT,
) -> dict[str, np.ndarray]:
    """Maps an official state dict onto `model`'s SAM weights: {our dotted name: array}."""
    for key, expected in _OPTIONAL_SOURCE.items():
        if key in state_dict:
            value = np.asarray(state_dict[key]).reshape(-1)
            if not np.allclose(value, expected):
                raise ConversionError(f"{source}: {key} is {value.tolist()}, SAM uses {expected}")
    plan = check_conversion({k: np.shape(v) for k, v in state_dict.items()}, model, source, hint)
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


# ----------------------------------------------------------------------------- the .pth cache

# Overrides where converted .pth files are cached (else beside the file, or the user cache).
CACHE_DIR_ENV = "STABLESAM_JAX_CACHE_DIR"
_EDGE_BYTES = 1 << 20
_ENTRY = re.compile(r"^\d+-\d+-[0-9a-f]{16}$")


def source_key(path: str) -> str:
    """The cache key of a file: its size, its mtime and a sha256 over both and the first and
    last MiB, so a replaced or rewritten file gets a new key without hashing gigabytes."""
    stat = os.stat(path)
    h = hashlib.sha256(f"{stat.st_size}|{stat.st_mtime_ns}|".encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE_BYTES))
        f.seek(max(0, stat.st_size - _EDGE_BYTES))
        h.update(f.read(_EDGE_BYTES))
    return f"{stat.st_size}-{stat.st_mtime_ns}-{h.hexdigest()[:16]}"


def cache_dirs(path: str) -> list[str]:
    """Where the conversion of `path` is cached, in order of preference: `$STABLESAM_JAX_CACHE_DIR`
    alone when set; else a folder beside the file (`<file>.stablesam_jax`), then one in the
    user cache (`$XDG_CACHE_HOME/stablesam_jax`, by default ~/.cache/stablesam_jax)."""
    path = os.path.abspath(path)
    folder = f"{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    if os.environ.get(CACHE_DIR_ENV):
        return [os.path.join(os.environ[CACHE_DIR_ENV], folder)]
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [path + ".stablesam_jax", os.path.join(user, "stablesam_jax", folder)]


def load_official(
    path: str, model: nnx.Module, model_type: str, hint: str = CLI_HINT
) -> tuple[dict[str, np.ndarray], dict]:
    """SAM weights (our names) and metadata of an official .pth for `model` (abstract is fine).

    Read from the conversion cache when an entry for this file (same `source_key`) exists and
    passes its digest checks; otherwise converted in memory with the completeness proof
    (`convert_state_dict`) and cached as an Orbax checkpoint, written atomically. A cached entry
    that cannot be read is converted again (with a warning)."""
    key = source_key(path)
    for folder in cache_dirs(path):
        entry = os.path.join(folder, key)
        if not os.path.isdir(entry):
            continue
        try:
            flat, meta = load(entry)
        except CheckpointError as e:
            warnings.warn(
                f"converting {path} again: its cached conversion is unusable ({e})", stacklevel=2
            )
            continue
        if meta.get("source_key") == key:
            return flat, meta
    flat = convert_state_dict(load_torch_state_dict(path), model, source=path, hint=hint)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    meta = {
        "kind": "sam",
        "model_type": model_type,
        "source": os.path.abspath(path),
        "source_key": key,
        "source_sha256": digest,
    }
    _write_cache(path, key, flat, meta)
    return flat, meta


def _write_cache(path: str, key: str, flat: dict, meta: dict) -> str | None:
    """Saves into a hidden temporary folder, then renames it into place (atomic: a reader sees
    no entry or a complete one); the first writable location wins. Older entries of the same
    file are removed. Returns the entry, or None (with a warning) when nowhere was writable."""
    problems = []
    for folder in cache_dirs(path):
        tmp = os.path.join(folder, f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(folder, exist_ok=True)
            save(tmp, flat, meta)
            final = os.path.join(folder, key)
            if os.path.isdir(final):  # an unusable entry (load_official did not return it)
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process cached it first
            for name in os.listdir(folder):
                if _ENTRY.match(name) and name != key:
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            return final
        except Exception as e:  # noqa: BLE001 - unwritable, full, or Orbax refusing the path
            shutil.rmtree(tmp, ignore_errors=True)
            problems.append(f"{folder}: {e}")
    warnings.warn(
        f"the conversion of {path} could not be cached ({'; '.join(problems)}); the next load "
        f"converts it again (set {CACHE_DIR_ENV} to a writable folder)",
        stacklevel=3,
    )
    return None
