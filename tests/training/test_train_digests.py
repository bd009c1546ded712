"""Training checkpoints carry a sha256 of every array of the train state: a damaged one stops the
resume naming the array and the step directory, changing nothing; one written before digests
resumes with one warning."""

import glob
import json
import os
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_helpers import tiny_config

from stablesam_jax import checkpoint as ckpt
from stablesam_jax import training


def _snapshot(workdir):
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
        if os.path.isfile(path) and "tensorboard" not in path:
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("train") / "run")
    config = tiny_config("prompt_tokens", total_steps=2, checkpoint_every_steps=0)
    training.train(config, workdir)
    return config, workdir


def test_the_state_digests_cover_every_array(finished):
    _, source = finished
    with open(os.path.join(source, "checkpoints", "2", "meta", "metadata")) as f:
        meta = json.load(f)
    names = set(meta["state_digests"])
    assert meta["digest_algorithm"] == "sha256"
    assert any(n.startswith("['params']") for n in names)
    assert any(n.startswith("['opt_state']") for n in names)
    assert {"['step']", "['rng']"} <= names


def _rewrite_state(step_dir, change):
    """Writes the step's train state again with `change` applied to its leaves (keystr -> array),
    keeping the step's metadata: damage that still decodes, which only the digests can see."""
    state_dir = os.path.join(step_dir, "state")
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(state_dir)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        values = [change(jax.tree_util.keystr(p), np.asarray(v)) for p, v in leaves]
        shutil.rmtree(state_dir)
        checkpointer.save(state_dir, jax.tree_util.tree_unflatten(treedef, values))


def test_an_array_changed_on_disk_stops_the_resume_naming_it(finished, tmp_path):
    config, source = finished
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    damaged_step = os.path.join(workdir, "checkpoints", "2")
    target = "['params']['mask_decoder.iou_token.embedding']"

    def change(name, value):
        if name != target:
            return value
        value = value.copy()
        value.flat[7] = np.nextafter(value.flat[7], np.float32(np.inf))  # one ulp
        return value

    _rewrite_state(damaged_step, change)
    before = _snapshot(workdir)
    with pytest.raises(ckpt.CheckpointError) as error:
        training.train(config, workdir)
    message = str(error.value)
    assert f"array {target!r} does not match the sha256 digest" in message
    assert damaged_step in message
    assert f"Delete {damaged_step} to resume from the checkpoint before it" in message
    assert _snapshot(workdir) == before


def test_a_flipped_byte_stops_the_resume_and_changes_nothing(finished, tmp_path):
    config, source = finished
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    damaged_step = os.path.join(workdir, "checkpoints", "2")
    files = glob.glob(os.path.join(damaged_step, "state", "**", "d", "*"), recursive=True)
    largest = max(files, key=os.path.getsize)
    data = bytearray(open(largest, "rb").read())
    data[len(data) // 2] ^= 0x10
    with open(largest, "wb") as f:
        f.write(data)
    before = _snapshot(workdir)
    with pytest.raises(ckpt.CheckpointError) as error:
        training.train(config, workdir)
    message = str(error.value)
    # The arrays are zstd-compressed and Orbax orders them in the file as its writes finish, so
    # the flip lands in a frame that fails to decode or in one that decodes to other values:
    # either is refused before anything is changed.
    assert "the train state could not be read" in message or "does not match the sha256" in message
    assert f"Delete {damaged_step} to resume from the checkpoint before it" in message
    assert _snapshot(workdir) == before


def test_a_checkpoint_without_digests_resumes_with_one_warning(finished, tmp_path):
    config, source = finished
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    meta_file = os.path.join(workdir, "checkpoints", "2", "meta", "metadata")
    with open(meta_file) as f:
        meta = json.load(f)
    del meta["state_digests"], meta["digest_algorithm"]
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = training.train(config, workdir)
    assert result["resumed_from"] == 2
    unverified = [w for w in caught if issubclass(w.category, ckpt.UnverifiedCheckpointWarning)]
    assert len(unverified) == 1
