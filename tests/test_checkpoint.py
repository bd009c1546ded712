"""Checkpoints verify what they load: a sha256 per array written at save time (SAM, plugins,
merged, the packaged demo weights), checked on load; old files load with one warning; a damaged
checkpoint gives one clean error, without Orbax's asynchronous tracebacks."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from random_models import random_stable_sam

from stablesam_jax import checkpoint as ckpt
from stablesam_jax import pretrained
from stablesam_jax.builder import build_sam, build_stable_sam, save_merged, save_plugins, save_sam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256_of(array) -> str:
    # Written out here (not the library's helper): dtype, shape, then the C-order bytes.
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def stable():
    """vit_t Stable-SAM with random weights."""
    return random_stable_sam(0)


@pytest.fixture(scope="module")
def saved(stable, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "sam": save_sam(stable, str(root / "sam")),
        "plugins": save_plugins(stable, str(root / "plugins")),
        "stable_sam": save_merged(stable, str(root / "merged")),
    }


def _tree_bytes(directory) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def _flip_middle_byte_of_largest_file(directory):
    files = glob.glob(os.path.join(directory, "**", "d", "*"), recursive=True)
    largest = max(files, key=os.path.getsize)
    data = bytearray(open(largest, "rb").read())
    data[len(data) // 2] ^= 0x10
    with open(largest, "wb") as f:
        f.write(data)
    return largest


def _orbax_weights(directory):
    # Orbax's own reader, no digests: what a load would have given without the check.
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(
            directory, args=ocp.args.Composite(weights=ocp.args.StandardRestore())
        )
    return {k: np.asarray(v) for k, v in restored["weights"].items()}


def test_every_kind_stores_a_sha256_per_array_and_loads_silently(stable, saved):
    for kind, directory in saved.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flat, meta = ckpt.load(directory)
        assert meta["kind"] == kind and meta["digest_algorithm"] == "sha256"
        assert set(meta["digests"]) == set(flat)
        for name, value in flat.items():
            assert meta["digests"][name] == sha256_of(value), (kind, name)
    model = build_stable_sam("vit_t", saved["sam"], plugins=saved["plugins"])
    ours, theirs = ckpt.flat_weights(model, lambda p, v: True), ckpt.flat_weights(stable)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_a_flipped_byte_is_refused_naming_the_array_and_the_file(saved, tmp_path):
    damaged = str(tmp_path / "merged")
    shutil.copytree(saved["stable_sam"], damaged)
    _flip_middle_byte_of_largest_file(damaged)
    # Without the digests the flip loads silently and changes exactly one array.
    good, bad = _orbax_weights(saved["stable_sam"]), _orbax_weights(damaged)
    changed = [k for k in good if not np.array_equal(good[k], bad[k])]
    assert len(changed) == 1
    before = _tree_bytes(damaged)

    with pytest.raises(ckpt.CheckpointError) as error:
        build_sam("vit_t", damaged)
    message = str(error.value)
    assert f"array {changed[0]!r}" in message and damaged in message
    assert "damaged" in message and "nothing was loaded" in message
    assert "again" in message  # what to do: write it again / download or copy it again

    # load_into leaves the model as it was, and nothing on disk changed.
    model = nnx.eval_shape(lambda: build_sam("vit_t"))
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.zeros(var.shape, var.dtype))
    with pytest.raises(ckpt.CheckpointError, match="does not match the sha256"):
        ckpt.load_into(model, damaged)
    assert all(not np.any(v) for v in ckpt.flat_weights(model).values())
    assert _tree_bytes(damaged) == before


def test_a_converted_checkpoint_says_how_to_convert_it_again(tmp_path):
    flat = {"w": np.arange(4096, dtype=np.float32)}
    directory = ckpt.save(
        str(tmp_path / "c"), flat, {"kind": "sam", "model_type": "vit_b", "source": "x.pth"}
    )
    meta = ckpt.read_meta(directory)
    meta["digests"]["w"] = "0" * 64  # as if the array had changed since
    with open(os.path.join(directory, "meta", "metadata"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load(directory)
    message = str(error.value)
    assert "array 'w'" in message
    command = f"convert/torch_to_flax.py --model-type vit_b --checkpoint x.pth --output {directory}"
    assert command in message and "--force" in message


def test_an_old_checkpoint_without_digests_loads_with_one_warning(tmp_path):
    flat = {f"w{i}": np.full((8,), i, np.float32) for i in range(5)}
    directory = str(tmp_path / "old")
    # The format before digests: the same items, no "digests" in the metadata.
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        meta = {"format_version": 1, "kind": "sam", "model_type": "vit_t"}
        ckptr.save(
            directory,
            args=ocp.args.Composite(
                weights=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
            ),
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, _ = ckpt.load(directory)
    unverified = [w for w in caught if issubclass(w.category, ckpt.UnverifiedCheckpointWarning)]
    assert len(unverified) == 1 and directory in str(unverified[0].message)
    for name in flat:
        np.testing.assert_array_equal(loaded[name], flat[name])


DAMAGED_LOAD = textwrap.dedent(
    """
    import sys
    from stablesam_jax import checkpoint as ckpt
    try:
        ckpt.load(sys.argv[1])
    except ckpt.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    """
)


def test_a_damaged_checkpoint_prints_one_clean_error(tmp_path):
    # Many arrays, so that other reads are still in flight when the first one fails: Orbax then
    # printed an "Event loop is closed" traceback for each of them.
    rng = np.random.default_rng(0)
    flat = {f"a{i:03d}": rng.standard_normal(16384).astype(np.float32) for i in range(150)}
    directory = ckpt.save(str(tmp_path / "c"), flat, {"kind": "sam"})
    data = max(
        glob.glob(os.path.join(directory, "weights", "**", "d", "*"), recursive=True),
        key=os.path.getsize,
    )
    os.truncate(data, os.path.getsize(data) // 10)
    result = subprocess.run(
        [sys.executable, "-c", DAMAGED_LOAD, directory],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {directory}: weights could not be read")
    assert "damaged or incomplete" in lines[0]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


def test_the_packaged_demo_weights_carry_and_pass_their_digests():
    stored, meta = pretrained.read_stored(pretrained.DEMO_SAM_FILE)
    assert set(meta["digests"]) == set(stored)
    for name, value in stored.items():
        assert value.dtype == np.float16 or not np.issubdtype(value.dtype, np.floating)
        assert meta["digests"][name] == sha256_of(value), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.read_npz(pretrained.DEMO_SAM_FILE)


def test_a_changed_packaged_weight_is_refused_and_a_file_without_digests_warns(tmp_path):
    stored, meta = pretrained.read_stored(pretrained.DEMO_SAM_FILE)
    name = sorted(stored)[3]
    changed = dict(stored)
    changed[name] = stored[name].copy()
    changed[name].flat[0] += np.float16(0.5)
    path = tmp_path / "changed.npz"
    np.savez_compressed(path, **changed, __meta__=np.array(json.dumps(meta)))
    before = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError) as error:
        pretrained.build_demo_sam(path)
    assert f"array {name!r}" in str(error.value) and str(path) in str(error.value)
    assert "Reinstall" in str(error.value)
    assert path.read_bytes() == before

    old_meta = {k: v for k, v in meta.items() if k not in ("digests", "digest_algorithm")}
    old = tmp_path / "old.npz"
    np.savez_compressed(old, **stored, __meta__=np.array(json.dumps(old_meta)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flat, _ = pretrained.read_npz(old)
    assert sum(issubclass(w.category, ckpt.UnverifiedCheckpointWarning) for w in caught) == 1
    np.testing.assert_array_equal(flat[name], stored[name].astype(np.float32))
