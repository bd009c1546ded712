"""`commands._errors`: a user's mistake is one line and exit 2, `--debug` / STABLESAM_DEBUG=1
show its traceback, a bug always shows its traceback; and the real `python -m` entry points."""

import os
import subprocess
import sys

import pytest

from stablesam_jax.commands import _errors
from stablesam_jax.commands import predict as predict_command
from stablesam_jax.commands import train as train_command
from stablesam_jax.utils.validation import InputError


def _bad_box_argv(world, tmp_path):
    return [str(world.image), "--checkpoint", str(world.sam), "--box", "1,1,500,5"] + [
        "--out",
        str(tmp_path / "o.png"),
    ]


def test_debug_flag_and_environment_show_the_traceback(world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(_errors.DEBUG_ENV, raising=False)
    assert predict_command.main(_bad_box_argv(world, tmp_path)) == 2
    assert capsys.readouterr().err.startswith("error: box [1.0, 1.0, 500.0, 5.0] lies outside")
    with pytest.raises(InputError, match="lies outside"):
        predict_command.main([*_bad_box_argv(world, tmp_path), "--debug"])
    monkeypatch.setenv(_errors.DEBUG_ENV, "1")
    with pytest.raises(InputError, match="lies outside"):
        predict_command.main(_bad_box_argv(world, tmp_path))
    monkeypatch.setenv(_errors.DEBUG_ENV, "0")
    assert predict_command.main(_bad_box_argv(world, tmp_path)) == 2
    assert not (tmp_path / "o.png").exists()


def test_a_bug_keeps_its_traceback(world, tmp_path, monkeypatch):
    def broken(path):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(predict_command, "_read_image", broken)
    with pytest.raises(KeyError, match="a bug"):
        predict_command.main(_bad_box_argv(world, tmp_path))
    # A ValueError that no validator raised is a bug too.
    wrapped = _errors.command(lambda argv: int("not a number"))
    with pytest.raises(ValueError, match="invalid literal"):
        wrapped([])


def test_main_returns_the_status_and_strips_debug():
    seen = []
    wrapped = _errors.command(lambda argv: seen.append(argv))
    assert wrapped(["--debug", "a"]) == 0
    assert seen == [["a"]]


def _run(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo_root,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_entry_points_exit_2_with_one_line(repo_root, world, tmp_path):
    """The real processes: `python -m stablesam_jax.predict` and `.train` (absl's sys.exit
    path)."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(world.image.read_bytes())
    before = photo.stat().st_mtime_ns
    predict = ["stablesam_jax.predict", str(photo), "--checkpoint", str(world.sam)]
    r = _run(repo_root, *predict, "--box", "1,1,5,5", "--out", str(photo))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --out")
    assert "Traceback" not in r.stderr
    assert photo.read_bytes() == world.image.read_bytes() and photo.stat().st_mtime_ns == before

    config = os.path.join(repo_root, "train", "configs", "tiny.py")
    train = ["stablesam_jax.train", f"--config={config}", f"--workdir={tmp_path / 'run'}"]
    r = _run(repo_root, *train, "--config.nope=1")
    assert r.returncode == 2, r.stderr
    assert "error: --config.nope: the config has no field 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_debug_reaches_the_absl_commands(repo_root, tmp_path):
    config = os.path.join(repo_root, "train", "configs", "tiny.py")
    argv = [f"--config={config}", f"--workdir={tmp_path / 'run'}", "--config.nope=1", "--debug"]
    with pytest.raises(_errors.UsageError, match="no field 'nope'"):
        train_command.main(argv)
