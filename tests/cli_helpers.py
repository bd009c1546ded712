"""Bad-input tests' helpers: a world of tiny inputs (image, vit_t checkpoints, small datasets),
a command's `main` run in-process, and a snapshot that proves nothing was written."""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from stablesam_jax import build_sam, build_stable_sam
from stablesam_jax.builder import save_plugins, save_sam


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    image: Path  # 48x64 (HxW) RGB
    sam: Path
    plugins: Path
    export: Path  # holds an export's file names (the export command only looks at them)
    data: Path  # data/<set>/img and data/<set>/mask folders

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _pairs(root: Path, stems, image_hw=(32, 40), mask_hw=None, extra_images=()) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for stem in [*stems, *extra_images]:
        Image.fromarray(np.full((*image_hw, 3), 90, np.uint8)).save(root / "img" / f"{stem}.jpg")
    for stem in stems:
        mask = np.zeros(mask_hw or image_hw, np.uint8)
        mask[4:12, 6:20] = 255
        Image.fromarray(mask).save(root / "mask" / f"{stem}.png")
    return root


def make_world(root: Path) -> World:
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 20:50] = (200, 60, 60)
    Image.fromarray(image).save(root / "image.png")
    Image.new("RGB", (64, 1)).save(root / "thin.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.txt").write_text("these are not weights\n")
    (root / "weights.pth").write_bytes(b"not a checkpoint either")
    # 1-bit PNGs of 100 and 200 megapixels: a few kilobytes each, over PIL's two limits.
    Image.new("1", (10_000, 10_000)).save(root / "bomb_warning.png")
    Image.new("1", (20_000, 10_000)).save(root / "bomb_error.png")
    sam = save_sam(build_sam("vit_t", seed=0), str(root / "sam"))
    plugins = save_plugins(build_stable_sam("vit_t", seed=0), str(root / "plugins"))
    export = root / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"format": "stablesam-jax-export"}))
    (export / "encoder.jaxexport").write_bytes(b"\0")
    data = root / "data"
    _pairs(data / "good", ["a", "b"])
    _pairs(data / "unmatched", ["a"], extra_images=["b"])
    _pairs(data / "bad_size", ["a"], mask_hw=(16, 20))
    return World(root, root / "image.png", Path(sam), Path(plugins), export, data)


def snapshot(*roots) -> dict:
    """Every file and folder under `roots`: bytes (sha256) and mtime of each file."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                state[os.path.join(folder, name)] = "dir"
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[path] = (digest, os.stat(path).st_mtime_ns)
    return state


def run_main(main, argv) -> int:
    """A command's exit status: its return value, or the code of the SystemExit that argparse
    raises for a usage error."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as done:
        return done.code
