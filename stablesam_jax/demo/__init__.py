"""The demo: Stable-SAM's stability gain, end to end, on data the project generates.

  python -m stablesam_jax.demo --out DIR            # about 10-15 minutes on a 2-core CPU
  python -m stablesam_jax.demo --out DIR --quick    # a 1-2 minute smoke run (CI)

1. Loads the demo SAM (`vit_demo`: 256 px input, a 4-block 128-wide ViT, SAM's real 256-wide
   decoder), pretrained by this project on generated scenes with tight boxes and several points
   only, as SAM was (`stablesam_jax/pretrained`, made by `train/configs/demo_pretrain.py`).
2. Freezes it and trains the Stable-SAM plugins (DSP + DRP, about 0.08 M weights) with the
   robust training strategy (RTS: boxes, noisy boxes, 1-10 points, coarse masks, synthetic
   occlusion) for one epoch over freshly generated training scenes, with the project's trainer.
3. Evaluates SAM and Stable-SAM on held-out generated scenes (a scene seed neither training set
   uses) with the paper's protocol: 20 prompts per image for each of GT box, noisy box, 1 point
   and 3 points; mIoU, mBIoU and the stability score mSF (0-100).
4. Writes DIR/results.json ({"sam"|"stable_sam": {prompt type: {"miou", "mbiou", "msf"}}}),
   DIR/results.md (the table), DIR/demo_info.json (settings, timings, DRP weights, the full
   evaluation report) and the figures DIR/masks_sam_vs_stable_sam.png,
   DIR/dsp_sampling_points.png and DIR/drp_alpha.png.

DIR/work holds the run's scratch files (SAM as an Orbax checkpoint, the trainer's workdir with
the trained plugins in DIR/work/train/export/plugins); it is replaced on every run.

Two further runs share its SAM, settings and trainer: `--study` (`study.run_study`: DT-SAM,
PT-SAM, DSP without and with RTS and Stable-SAM against SAM, on the held-out scenes and on the
other scene family, which no training saw; the paper's Tables 2, 5 and 11 at demo scale) and
`--low-shot` (`low_shot.run_low_shot`: PT-SAM, HQ-SAM and Stable-SAM on 220 and 440 scenes for 12
epochs; Table 7). `--oracle` (`oracle.run_oracle`) trains nothing: the frozen SAM with its DSP's
samples placed by the ground truth (`evaluation.oracle`), what the paper's mechanism can gain.

Modules: `settings` (DemoSettings, FULL, QUICK, seeds, file names), `pipeline` (`run`,
`train_config`, `results_json`), `recipes` (what each compared method trains), `study`,
`low_shot`, `oracle`, `figure_model` (the models' masks and attention for the figures,
`make_figures`), `figures` (drawing, PIL only); the command line is `stablesam_jax.commands.demo`.
"""

import importlib

from .settings import (
    EVAL_SCENE_SEED,
    FIGURE_FILES,
    FULL,
    QUICK,
    RESULT_KEYS,
    TRAIN_SCENE_SEED,
    DemoSettings,
)

# Loaded on first use: the pipeline and the figure model import JAX, the trainer and the
# evaluator, which `demo.settings` (and `python -m stablesam_jax.demo --help`) do not need.
_LAZY = {
    "run": "pipeline",
    "train_config": "pipeline",
    "results_json": "pipeline",
    "make_figures": "figure_model",
    "FigureModel": "figure_model",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVAL_SCENE_SEED",
    "FIGURE_FILES",
    "FULL",
    "QUICK",
    "RESULT_KEYS",
    "TRAIN_SCENE_SEED",
    "DemoSettings",
    *_LAZY,
]
