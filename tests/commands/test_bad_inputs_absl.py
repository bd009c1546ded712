"""The catalogue of a user's mistakes, continued, for the absl commands (train, eval): bad flags,
`--config.KEY` overrides naming no field, configs that cannot work, missing or inconsistent data
and checkpoints, outputs that would replace inputs. Each ends in one message, exit status 2, no
traceback, and nothing written (not even an empty workdir or output folder).

The commands run in-process (`main(argv)`); argv entries are formatted with `w` (the world's
folder), `t` (the case's empty folder), `sam`, `plugins` and `data`.
"""

import os
from collections.abc import Callable
from typing import NamedTuple

import pytest
from cli_helpers import run_main, snapshot

from stablesam_jax import training
from stablesam_jax.commands import eval as eval_command
from stablesam_jax.commands import train as train_command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "train", "configs", "tiny.py")
FOLDER = os.path.join(REPO, "eval", "configs", "folder.py")


class Case(NamedTuple):
    name: str
    argv: list  # templates
    phrase: str
    setup: Callable | None = None  # (tmp_path) -> None, before the snapshot


def _train(*extra, workdir="{t}/run", config=TINY):
    head = [f"--config={config}"] if config else []
    return head + ([f"--workdir={workdir}"] if workdir else []) + list(extra)


def _eval(*extra, data="good", output="{t}/out"):
    return [
        f"--config={FOLDER}",
        "--config.models.sam.model_type=vit_t",
        "--config.models.sam.checkpoint={sam}",
        "--config.models.stable_sam.enabled=False",
        f"--config.datasets.folder.image_dir={{data}}/{data}/img",
        f"--config.datasets.folder.mask_dir={{data}}/{data}/mask",
        f"--config.output_dir={output}",
        "--config.num_prompts=2",
        "--config.progress=False",
        *extra,
    ]


def _mkdir(name):
    return lambda t: (t / name).mkdir(parents=True)


TRAIN = [
    Case("unknown_override", _train("--config.nope=3"), "the config has no field 'nope'"),
    Case("misspelled_override", _train("--config.batch_sise=3"), 'did you mean "batch_size"'),
    Case("nested_unknown", _train("--config.optimizer.nope=1"), "--config.optimizer.nope"),
    Case("override_of_wrong_type", _train("--config.batch_size=abc"), "--config.batch_size=abc"),
    Case("unknown_flag", _train("--bogus"), "Unknown command line flag 'bogus'"),
    Case("extra_argument", _train("leftover"), "unexpected arguments"),
    Case("no_workdir", _train(workdir=None), "pass --workdir"),
    Case("no_config", _train(config=None), "pass --config"),
    Case("missing_config_file", _train(config="{t}/nope.py"), "did not load"),
    Case(
        "workdir_is_a_file",
        _train(workdir="{t}/file"),
        "is a file, not a folder",
        lambda t: (t / "file").write_text("x"),
    ),
    Case(
        "missing_sam_checkpoint",
        _train("--config.sam_checkpoint={t}/nope"),
        "config.sam_checkpoint=",
    ),
    Case(
        "workdir_is_the_checkpoint",
        _train("--config.sam_checkpoint={sam}", workdir="{sam}"),
        "would write over the input",
    ),
    Case(
        "checkpoint_in_the_export",
        _train("--config.sam_checkpoint={t}/run/export/sam"),
        "which this run's export replaces",
        _mkdir("run/export/sam"),
    ),
    Case("image_size_of_another_model", _train("--config.image_size=1024"), "image_size=1024"),
    Case("unknown_trainable", _train("--config.trainable=bogus"), "unknown trainable subset"),
    Case("batch_size_0", _train("--config.batch_size=0"), "batch_size must be >= 1"),
    Case("folders_without_dirs", _train("--config.data.source=folders"), "data.image_dir"),
    Case(
        "missing_data_folders",
        _train(
            "--config.data.source=folders",
            "--config.data.image_dir={t}/no_images",
            "--config.data.mask_dir={t}/no_masks",
        ),
        "no_images",
    ),
]

EVAL = [
    Case("missing_dataset_folder", _eval(data="nope"), "does not exist"),
    Case("image_and_mask_counts_differ", _eval(data="unmatched"), "have no partner"),
    Case("mask_of_another_size", _eval(data="bad_size"), "does not belong together"),
    Case("missing_checkpoint", _eval("--config.models.sam.checkpoint={t}/nope"), "does not exist"),
    Case(
        "stable_sam_without_plugins",
        _eval(
            "--config.models.stable_sam.enabled=True",
            "--config.models.stable_sam.model_type=vit_t",
            "--config.models.stable_sam.checkpoint={sam}",
        ),
        "needs plugins",
    ),
    Case("unknown_model_type", _eval("--config.models.sam.model_type=vit_q"), "vit_q"),
    Case("unknown_override", _eval("--config.num_promts=3"), "has no field 'num_promts'"),
    Case("override_without_config", ["--config.num_prompts=2"], "pass the file too"),
    Case("no_config", [], "pass --config"),
    Case("extra_argument", _eval("leftover"), "unexpected arguments"),
    Case(
        "output_dir_is_a_file",
        _eval(output="{t}/file"),
        "is a file, not a folder",
        lambda t: (t / "file").write_text("x"),
    ),
    Case("output_dir_is_the_images", _eval(output="{data}/good/img"), "would write over"),
    Case("output_dir_in_a_checkpoint", _eval(output="{sam}/results"), "would write over"),
]

CASES = [("train", c) for c in TRAIN] + [("eval", c) for c in EVAL]
MAINS = {"train": train_command.main, "eval": eval_command.main}


@pytest.mark.parametrize("command,case", CASES, ids=[f"{n}-{c.name}" for n, c in CASES])
def test_a_mistake_is_one_message_exit_2_and_nothing_written(
    command, case, world, tmp_path, capsys, monkeypatch
):
    # Detecting a cluster must come before any JAX computation, and this process has computed
    # (a fresh `python -m stablesam_jax.train` has not): a single host, as detection would say.
    monkeypatch.setattr(training, "initialize_distributed", lambda *args, **kwargs: None)
    if case.setup is not None:
        case.setup(tmp_path)
    before = snapshot(world.root, tmp_path)
    names = dict(w=world.root, t=tmp_path, sam=world.sam, plugins=world.plugins, data=world.data)
    status = run_main(MAINS[command], [a.format(**names) for a in case.argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert case.phrase in err, err
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    assert snapshot(world.root, tmp_path) == before
