"""The catalogue of bad inputs for the serving runtime: damaged exports are refused at load with
a ServingError naming the file, and `decode` refuses the prompts `SamPredictor` refuses (through
`utils.validation`), touching neither the export nor the caller's arrays."""

import json
import shutil

import numpy as np
import pytest
from cli_helpers import snapshot

from stablesam_jax import build_sam
from stablesam_jax.serving import ExportedSam, ServingError
from stablesam_jax.serving.export import export_model
from stablesam_jax.utils.validation import InputError

IMAGE = np.zeros((48, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export_model(build_sam("vit_t", seed=0), str(out), platforms=("cpu",))
    return out


@pytest.fixture(scope="module")
def served(export_dir):
    sam = ExportedSam(export_dir)
    return sam, sam.encode(IMAGE)


def _truncate(name):
    def damage(d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return damage


def _flip_bytes(name, at):
    def damage(d):
        data = bytearray((d / name).read_bytes())
        start = int(len(data) * at)
        data[start : start + 16] = bytes(b ^ 0x5A for b in data[start : start + 16])
        (d / name).write_bytes(bytes(data))

    return damage


def _manifest(change):
    def damage(d):
        path = d / "manifest.json"
        path.write_text(change(path.read_text()))

    return damage


def _edit(edit):
    def change(text):
        manifest = json.loads(text)
        edit(manifest)
        return json.dumps(manifest)

    return _manifest(change)


LOADER_CASES = [
    ("truncated_decoder_weights", _truncate("decoder_weights.npz"), "decoder_weights.npz cannot"),
    ("truncated_encoder_weights", _truncate("encoder_weights.npz"), "truncated or damaged"),
    ("damaged_artifact", _flip_bytes("encoder.jaxexport", 0.3), "could not be deserialized"),
    ("truncated_artifact", _truncate("decoder.jaxexport"), "decoder.jaxexport could not"),
    ("manifest_not_json", _manifest(lambda text: text[:-20]), "is not valid JSON"),
    ("manifest_a_list", _manifest(lambda text: "[1, 2]"), "not a stablesam-jax export manifest"),
    ("manifest_newer", _edit(lambda m: m.update(format_version=99)), "version 99"),
    ("manifest_without_size", _edit(lambda m: m.pop("img_size")), "lacks ['img_size']"),
    (
        "manifest_without_checksum",
        _edit(lambda m: m["decoder"].pop("weights_sha256")),
        "decoder.weights_sha256",
    ),
    ("missing_weights", lambda d: (d / "encoder_weights.npz").unlink(), "is missing"),
    (
        "changed_weights",
        lambda d: np.savez(d / "decoder_weights.npz", **{"x": np.zeros(3)}),
        "does not match its checksum",
    ),
]


@pytest.mark.parametrize("name,damage,phrase", LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_a_damaged_export_is_refused_at_load(export_dir, tmp_path, name, damage, phrase):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    damage(copy)
    before = snapshot(copy)
    with pytest.raises(ServingError) as raised:
        ExportedSam(copy)
    assert phrase in str(raised.value)
    assert snapshot(copy) == before


BOX = [[5.0, 5.0, 30.0, 20.0]]
DECODE_CASES = [
    ("box_outside", dict(boxes=[[0, 0, 100, 100]]), "lies outside the 64x48 (WxH) image"),
    ("box_nan", dict(boxes=[[0, np.nan, 10, 10]]), "NaN or inf"),
    ("box_flipped", dict(boxes=[[10, 0, 5, 10]]), "x0 <= x1"),
    ("box_not_2d", dict(boxes=[0, 0, 5, 5]), "boxes must be [B, 4]"),
    ("label_5", dict(point_coords=[[[3, 3]]], point_labels=[[5]]), "got 5"),
    ("label_fraction", dict(point_coords=[[[3, 3]]], point_labels=[[0.7]]), "got 0.7"),
    ("labels_without_coords", dict(point_labels=[[1]]), "point_coords must be given"),
    ("coords_2d", dict(point_coords=[[3, 3]], point_labels=[1]), "[B, N, 2]"),
    ("mask_nan", dict(boxes=BOX, mask_input=np.full((1, 64, 64), np.nan)), "finite"),
    ("mask_wrong_size", dict(boxes=BOX, mask_input=np.zeros((1, 32, 32))), "(64, 64)"),
    (
        "counts_disagree",
        dict(point_coords=[[[3, 3]], [[4, 4]]], point_labels=[[1], [1]], boxes=BOX * 3),
        "2 point sets, 3 boxes",
    ),
]


@pytest.mark.parametrize("name,kwargs,phrase", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decode_refuses_what_the_predictor_refuses(served, name, kwargs, phrase):
    sam, embedding = served
    arrays = {k: np.array(v, copy=True) for k, v in kwargs.items()}
    with pytest.raises(InputError) as raised:
        sam.decode(embedding, **arrays)
    assert phrase in str(raised.value)
    for key, value in kwargs.items():
        np.testing.assert_array_equal(arrays[key], np.asarray(value))


def test_predict_takes_one_prompt(served):
    sam, embedding = served
    with pytest.raises(InputError, match="use decode for several prompts"):
        sam.predict(embedding, box=np.array(BOX * 2))
    masks, iou, _ = sam.predict(embedding, box=np.array(BOX[0]), multimask_output=False)
    assert masks.shape == (1, 48, 64) and np.isfinite(iou).all()
