"""Training checkpoints carry a sha256 of every array of the train state: a damaged one stops the
resume naming the array and the step directory, changing nothing; one written before digests
resumes with one warning."""

import glob
import json
import os
import shutil
import warnings

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


def test_the_state_digests_cover_every_array_and_a_flipped_byte_stops_the_resume(
    finished, tmp_path
):
    config, source = finished
    step_dir = os.path.join(source, "checkpoints", "2")
    with open(os.path.join(step_dir, "meta", "metadata")) as f:
        meta = json.load(f)
    names = set(meta["state_digests"])
    assert meta["digest_algorithm"] == "sha256"
    assert any(n.startswith("['params']") for n in names)
    assert any(n.startswith("['opt_state']") for n in names)
    assert {"['step']", "['rng']"} <= names

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
    assert damaged_step in message and "does not match the sha256 digest" in message
    named = message.split("array ")[1].split(" does not match")[0].strip("'\"")
    assert named in names
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
