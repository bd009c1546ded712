"""The demo's small SAM (`vit_demo`), pretrained by this project on its generated scenes.

No real SAM weights can be downloaded where this project is built, so the demo's frozen "SAM" is
one this package trains itself (`train/configs/demo_pretrain.py`) and ships as `vit_demo_sam.npz`:
every SAM weight under its dotted name, stored as float16 to keep the file small, plus a JSON
`__meta__` entry saying how it was made, with a sha256 digest of every stored array ("digests"),
checked by `read_npz`. `python -m stablesam_jax.commands.export_pretrained` writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..builder import build_sam, save_sam
from ..utils.digest import DIGEST_ALGORITHM, array_digests
from ..utils.io import atomic_write

DEMO_MODEL_TYPE = "vit_demo"
DEMO_SAM_FILE = Path(__file__).with_name("vit_demo_sam.npz")
META_KEY = "__meta__"
PRETRAIN_COMMAND = (
    "python -m stablesam_jax.train --config train/configs/demo_pretrain.py:clusters "
    "--workdir WORKDIR && "
    "python -m stablesam_jax.commands.export_pretrained --checkpoint WORKDIR/export/sam "
    "--out stablesam_jax/pretrained/vit_demo_sam.npz"
)


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(flat float32 weights, metadata) from a packaged `.npz` weight file, every stored array
    checked against its digest (CheckpointError on a mismatch; a warning for a file without)."""
    stored, meta = read_stored(path)
    advice = (
        "Reinstall stablesam-jax (or restore the file from its repository), or rebuild it with:\n  "
        + PRETRAIN_COMMAND
    )
    ckpt.verify_digests(stored, meta.get("digests"), str(path), advice)
    flat = {
        name: value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
        for name, value in stored.items()
    }
    return flat, meta


def read_stored(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(the arrays exactly as stored, metadata) from a packaged `.npz`, unchecked."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory: this reads a .npz written by "
            "`python -m stablesam_jax.commands.export_pretrained`; load an Orbax 'sam' checkpoint "
            f"directory with build_sam({DEMO_MODEL_TYPE!r}, {os.fspath(path)!r})"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Pretrain and export the demo SAM with:\n  {PRETRAIN_COMMAND}"
        )
    with np.load(path, allow_pickle=False) as data:
        if META_KEY not in data.files:
            raise ValueError(f"{path} has no {META_KEY} entry: not a stablesam-jax weight file")
        meta = json.loads(str(data[META_KEY]))
        stored = {name: data[name] for name in data.files if name != META_KEY}
    return stored, meta


def write_npz(
    path: str | os.PathLike, flat: dict[str, np.ndarray], meta: dict, dtype=np.float16
) -> Path:
    """Stores `flat` with floating arrays cast to `dtype`, and the stored arrays' digests in the
    metadata; refuses values the cast would ruin. Casting float16 values to float16 changes no
    bit, so `write_npz(path, *read_stored(path))` rewrites only the metadata."""
    path = Path(path)
    stored = {}
    for name, value in flat.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            limit = float(np.finfo(dtype).max)
            if value.size and float(np.max(np.abs(value))) > limit:
                raise ValueError(f"{name}: |value| exceeds the {np.dtype(dtype).name} range")
            value = value.astype(dtype)
        stored[name] = value
    meta = {
        **meta,
        "stored_dtype": np.dtype(dtype).name,
        "digest_algorithm": DIGEST_ALGORITHM,
        "digests": array_digests(stored),
    }
    stored[META_KEY] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez_compressed(f, **stored))
    return path


def build_demo_sam(path: str | os.PathLike | None = None, *, plugin_config=None, seed: int = 0):
    """The pretrained demo SAM; with `plugin_config` (a `PluginConfig`) Stable-SAM with fresh
    plugins on top, which computes exactly what SAM computes until the plugins are trained."""
    path = DEMO_SAM_FILE if path is None else Path(path)
    flat, meta = read_npz(path)
    model_type = meta.get("model_type", DEMO_MODEL_TYPE)
    model = build_sam(model_type, plugin_config=plugin_config, seed=seed)
    ckpt.load_flat_weights(model, flat, ckpt.is_sam_weight, str(path))
    return model


def save_as_checkpoint(path: str | os.PathLike | None, directory: str | os.PathLike) -> str:
    """Writes the packaged weights as an Orbax "sam" checkpoint directory (what the trainer's
    `sam_checkpoint` and `build_sam(checkpoint=...)` read)."""
    return save_sam(build_demo_sam(path), os.fspath(directory), force=True)


def pack_checkpoint(checkpoint: str, out: str | os.PathLike, dtype: str = "float16") -> dict:
    """Writes a trained "sam" checkpoint as a packaged weight file (`write_npz`), its metadata
    naming the source and, where the trainer's workdir holds them, the training config and the
    final training metrics; returns that metadata plus the file's size in "bytes"."""
    flat, meta = ckpt.load(checkpoint)
    if meta.get("kind") != "sam":
        raise ckpt.CheckpointError(
            f"{checkpoint} is a {meta.get('kind')!r} checkpoint; the demo needs plain SAM weights "
            "(the export of a run with trainable='all' and with_plugins=False)"
        )
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    info = {"kind": "sam", "model_type": meta.get("model_type"), "source": checkpoint}
    info.update(_training_summary(workdir))
    path = write_npz(out, flat, info, dtype=np.dtype(dtype))
    info["bytes"] = os.path.getsize(path)
    return info


def _training_summary(workdir: str) -> dict:
    """The run's config fields and its last 50 steps' mean IoU and loss, from its workdir."""
    info = {}
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        info["train_config"] = {
            key: config.get(key) for key in ("model_type", "trainable", "batch_size", "seed")
        }
        data = config.get("data", {})
        info["train_config"]["num_scenes"] = data.get("num_scenes")
        info["train_config"]["scene_family"] = data.get("scene_family", "shapes")
    metrics_path = os.path.join(workdir, "train_metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            last = rows[-50:]
            info["train_steps"] = rows[-1]["step"]
            info["final_train_iou"] = float(np.mean([r["train_iou"] for r in last]))
            info["final_loss"] = float(np.mean([r["loss"] for r in last]))
    return info
