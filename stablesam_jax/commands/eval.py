"""Evaluation job: `python -m stablesam_jax.eval --config eval/configs/NAME.py [--config.KEY=VALUE]`.

Runs the config's models over its datasets and prompt types (and COCO sets), prints a Markdown
table shaped like the paper's Table 2 and writes `results.json` + `results.md` to
`config.output_dir`. Each config's docstring gives its command and expected result. The fields
come from `evaluation.base_config` (top level), `model_config`, `layout_dataset_config`,
`folder_dataset_config`, `scenes_dataset_config`, `tfds_dataset_config` and `coco_config`; any
of them can be overridden, e.g. `--config.models.sam.checkpoint=DIR`,
`--config.datasets["DIS5K-VD"].enabled=False`, `--config.num_prompts=5`.
"""

from __future__ import annotations

from absl import app
from ml_collections import config_flags

from .. import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "An eval config (eval/configs/*.py).")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE overrides")
    if _CONFIG.value is None:
        raise app.UsageError("pass --config eval/configs/NAME.py")
    evaluation.run(_CONFIG.value)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
