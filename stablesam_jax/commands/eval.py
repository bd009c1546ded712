"""Evaluation job: `python -m stablesam_jax.eval --config eval/configs/NAME.py [--config.KEY=VALUE]`.

Runs the config's models over its datasets and prompt types (and COCO sets), prints a Markdown
table shaped like the paper's Table 2 and writes `results.json` + `results.md` to
`config.output_dir`. Each config's docstring gives its command and expected result. The fields
come from `evaluation.base_config` (top level), `model_config`, `layout_dataset_config`,
`folder_dataset_config`, `scenes_dataset_config`, `tfds_dataset_config` and `coco_config`; any
of them can be overridden, e.g. `--config.models.sam.checkpoint=DIR`,
`--config.datasets["DIS5K-VD"].enabled=False`, `--config.num_prompts=5`.

Exit status: 0 done, 2 a usage error: a bad flag or config, a missing or inconsistent dataset, a
missing checkpoint (one message; `--debug` or STABLESAM_DEBUG=1 adds the traceback).
"""

from __future__ import annotations

import sys

from ._absl import config_file_flag, loaded_config, run_absl
from ._errors import UsageError, command
from ._outputs import check_output_dir, refuse_overwriting, removed_if_left_empty

PROG = "python -m stablesam_jax.eval"

config_file_flag()


def _check(config) -> None:
    """The job's own checks of the config and its data, run first: the evaluation package
    raises plain ValueError / FileNotFoundError for a config mistake, read here as one."""
    from ..evaluation.sources import as_sample_sources
    from ..evaluation.specs import specs_from_config

    try:
        specs, datasets, coco_sets = specs_from_config(config)
        for spec in specs:
            spec.validate()
        as_sample_sources(datasets, config.get("max_images"))
        for coco in coco_sets:
            coco.check_paths()
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    out = check_output_dir(config.output_dir, "config.output_dir")
    checkpoints = [p for s in specs for p in (s.checkpoint, s.plugins, s.merged)]
    refuse_overwriting(out, checkpoints, "config.output_dir", inside=True)
    data = [p for d in datasets for p in (d.root, d.image_dir, d.mask_dir, d.tfds_dir)]
    data += [p for c in coco_sets for p in (c.image_dir, c.annotation_file)]
    refuse_overwriting(out, data, "config.output_dir")


def _evaluate(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE overrides")
    config = loaded_config("eval/configs/NAME.py")
    _check(config)
    from .. import evaluation

    with removed_if_left_empty(config.output_dir):
        evaluation.run(config)
    return 0


@command
def main(argv: list[str]) -> int:
    return run_absl(_evaluate, argv, PROG)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
