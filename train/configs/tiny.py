r"""Tiny run on generated scenes: the smoke test of the whole training stack (used by tests).

vit_t (a 2-block, 64-wide encoder at 256 px with SAM's real 256-wide decoder), random weights,
trained on generated scenes (stablesam_jax/data/scenes.py) with the full RTS prompt mixture,
synthetic occlusion, flip and large-scale jitter. Runs on a 2-core CPU in about a minute.

The default trains the mask decoder (DT-SAM's subset): over a random SAM the plugins alone have
almost nothing to steer (their loss stays flat), while the decoder's loss visibly falls.
`tiny.py:plugins`, `tiny.py:prompt_tokens` and `tiny.py:all` train the other subsets (`all`
without plugins, as pretraining does).

Command:
  python -m stablesam_jax.train --config train/configs/tiny.py --workdir /tmp/tiny

Expected result (2-core CPU shared with other jobs, jax 0.10.2, float32): losses 1.60, 1.55,
1.31, 1.22, 1.05 over steps 1-5, then about 1.1 (10-step means 1.25, 1.15, 1.12, 1.11, 1.16,
1.12): the decoder first learns that most pixels are background; learning shapes from a random SAM
takes hundreds of steps (tiny.py:all, batch 8, lr 3e-4: dice 0.97 -> 0.65 by step 500).
About 9-13 images/s after compilation, ~70 s wall in all; WORKDIR/export/sam loads with
`build_sam("vit_t", WORKDIR/export/sam)`.
"""

from stablesam_jax.training import default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.model_type = "vit_t"
    config.image_size = 256
    config.trainable = arg or "decoder"
    config.with_plugins = config.trainable == "plugins"
    config.batch_size = 4
    config.total_steps = 60
    config.optimizer.learning_rate = 1e-3

    config.data.source = "scenes"
    config.data.num_scenes = 64
    config.data.scene_size = 256
    config.data.read_threads = 2

    # 4,096 logits per mask at 64x64: dense is exact and cheaper than 12,544 sampled points.
    config.loss.sampling = "dense"

    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    config.keep_checkpoints = 2
    return config
