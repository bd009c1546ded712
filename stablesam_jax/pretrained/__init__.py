"""The demo's small SAM (`vit_demo`), pretrained by this project on its generated scenes.

No real SAM weights can be downloaded where this project is built, so the demo's frozen "SAM" is
one this package trains itself (`train/configs/demo_pretrain.py`) and ships as `vit_demo_sam.npz`:
every SAM weight under its dotted name, stored as float16 to keep the file small, plus a JSON
`__meta__` entry saying how it was made. `python -m stablesam_jax.pretrained.export` writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DEMO_MODEL_TYPE = "vit_demo"
DEMO_SAM_FILE = Path(__file__).with_name("vit_demo_sam.npz")
META_KEY = "__meta__"
PRETRAIN_COMMAND = (
    "python -m stablesam_jax.train --config train/configs/demo_pretrain.py --workdir WORKDIR && "
    "python -m stablesam_jax.pretrained.export --checkpoint WORKDIR/export/sam "
    "--out stablesam_jax/pretrained/vit_demo_sam.npz"
)


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(flat float32 weights, metadata) from a packaged `.npz` weight file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Pretrain and export the demo SAM with:\n  {PRETRAIN_COMMAND}"
        )
    with np.load(path, allow_pickle=False) as data:
        if META_KEY not in data.files:
            raise ValueError(f"{path} has no {META_KEY} entry: not a stablesam-jax weight file")
        meta = json.loads(str(data[META_KEY]))
        flat = {
            name: data[name].astype(np.float32)
            if np.issubdtype(data[name].dtype, np.floating)
            else data[name]
            for name in data.files
            if name != META_KEY
        }
    return flat, meta


def write_npz(
    path: str | os.PathLike, flat: dict[str, np.ndarray], meta: dict, dtype=np.float16
) -> Path:
    """Stores `flat` with floating arrays cast to `dtype`; refuses values the cast would ruin."""
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
    stored[META_KEY] = np.array(json.dumps({**meta, "stored_dtype": np.dtype(dtype).name}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **stored)
    os.replace(tmp, path)
    return path


def build_demo_sam(path: str | os.PathLike | None = None, *, plugin_config=None, seed: int = 0):
    """The pretrained demo SAM; with `plugin_config` (a `PluginConfig`) Stable-SAM with fresh
    plugins on top, which computes exactly what SAM computes until the plugins are trained."""
    from .. import checkpoint as ckpt
    from ..builder import build_sam

    path = DEMO_SAM_FILE if path is None else Path(path)
    flat, meta = read_npz(path)
    model_type = meta.get("model_type", DEMO_MODEL_TYPE)
    model = build_sam(model_type, plugin_config=plugin_config, seed=seed)
    ckpt.load_flat_weights(model, flat, ckpt.is_sam_weight, str(path))
    return model


def save_as_checkpoint(path: str | os.PathLike | None, directory: str | os.PathLike) -> str:
    """Writes the packaged weights as an Orbax "sam" checkpoint directory (what the trainer's
    `sam_checkpoint` and `build_sam(checkpoint=...)` read)."""
    from ..builder import save_sam

    return save_sam(build_demo_sam(path), os.fspath(directory), force=True)
