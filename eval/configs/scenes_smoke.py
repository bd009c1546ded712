"""Smoke run on generated scenes with random-weight tiny models (no weights or data needed).

Command:
    python -m stablesam_jax.eval --config eval/configs/scenes_smoke.py
    (about a minute on 2 CPU cores; `--config.datasets.scenes.num=2 --config.num_prompts=4` for
    a few seconds. Trained weights: `--config.models.stable_sam.plugins=DIR` etc.)

Both models are `vit_t` with the same random SAM weights (seed 0); Stable-SAM's plugins are fresh,
and fresh plugins reproduce SAM exactly, so the two rows must be identical: a check of the whole
pipeline. Random weights segment nothing useful, so the values only say the job runs.

Expected result (CPU, jax 0.10.2, 8 scenes at 256 px, 20 prompts per type; about 35 s of
evaluation on 2 loaded CPU cores; the same table in the per-dataset and the pooled section):
    | Model      | GT Box            | Noisy Box        | 1 Point          | 3 Points         |
    | sam        | 4.9 / 3.3 / 100.0 | 5.0 / 3.4 / 68.4 | 6.4 / 4.1 / 81.1 | 6.5 / 4.2 / 79.3 |
    | stable_sam | 4.9 / 3.3 / 100.0 | 5.0 / 3.4 / 68.4 | 6.4 / 4.1 / 81.1 | 6.5 / 4.2 / 79.3 |
and mean DRP weights a1 0.280 / 0.282 / 0.418 / 0.404 (fresh plugins: a1 still routes, but the
sampling offsets are 0, so the mix equals SAM's features). Other platforms may move a value in
the last digit.
"""

from stablesam_jax import evaluation


def get_config():
    config = evaluation.base_config("eval_out/scenes_smoke")
    config.models.sam = evaluation.model_config("vit_t", "sam", random_init=True, seed=0)
    config.models.stable_sam = evaluation.model_config(
        "vit_t", "stable_sam", random_init=True, seed=0
    )
    config.datasets.scenes = evaluation.scenes_dataset_config(num=8, seed=0, size=256)
    return config
