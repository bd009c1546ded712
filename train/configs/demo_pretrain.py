r"""Pretrains the demo's small SAM (vit_demo) from scratch on generated scenes, as SAM was trained:
every weight trainable, high-quality prompts only (tight boxes and 3, 5 or 10 points), no
synthetic occlusion. The demo (`python -m stablesam_jax.demo`) freezes the result and trains the
Stable-SAM plugins on top of it.

The packaged float16 checkpoint the demo loads is the "clusters" variant's export: it pretrains
on the clusters scene family (touching look-alike neighbours, parts of another colour;
`stablesam_jax.data.cluster_scenes`), built so that SAM's failure mode appears: strong with a
tight box, fragile with a loose one or one click.
  python -m stablesam_jax.train --config train/configs/demo_pretrain.py:clusters --workdir /tmp/prec
  python -m stablesam_jax.commands.export_pretrained --checkpoint /tmp/prec/export/sam \
      --out stablesam_jax/pretrained/vit_demo_sam.npz
Expected (2026-12-01): 2,400 steps of 8 scenes, 42 minutes on 2 cores, final train IoU 0.72
(0.66 over the last 50 steps); scored by eval/configs/demo_sam_clusters.py on 40 clusters
selection scenes, mIoU GT box 80.8, noisy box 70.6, one point 41.1, three points 61.4.
From random weights the model first predicts empty masks for several hundred steps, then learns.

The default variant (no argument, "stage1") pretrains the same way on the simpler "shapes" family
(2,400 steps, about 35 CPU-minutes, final train IoU about 0.46); the package shipped it until
2026-12-02. An optional stage 2 continues from its export on new scenes (1,600 steps, lower rate):
  python -m stablesam_jax.train --config train/configs/demo_pretrain.py:stage2 \
      --config.init_checkpoint=/tmp/pre1/export/sam --workdir /tmp/pre2
It makes a better box model and a worse one-click model. Measured with the demo on the selection
scenes (shapes family, `--eval-seed 4 --eval-scenes 40`, 2026-11-26), SAM mIoU stage 1 -> stage 2:
GT box 62.8 -> 66.8, noisy box 58.8 -> 61.8, one point 30.2 -> 25.0, three points 52.4 -> 50.7;
Stable-SAM's gain over its SAM stays about the same (one point +3.7 -> +3.3, noisy box +0.1 ->
+0.4).
Data: one pass over `data.num_scenes` generated scenes per stage (scene seeds 1 and 5; the demo
trains its plugins on seed 2, evaluates on seed 3 and chose its settings on seed 4, so no two sets
share a scene), one random instance per scene, flip and a mild scale jitter.
"""

from stablesam_jax.training import default_config


def get_config(arg: str | None = None):
    if arg not in (None, "", "stage1", "stage2", "clusters"):
        raise ValueError(
            f"unknown variant {arg!r}: use demo_pretrain.py, demo_pretrain.py:stage2 or "
            "demo_pretrain.py:clusters"
        )
    config = default_config()
    config.model_type = "vit_demo"
    config.image_size = 256
    config.with_plugins = False
    config.trainable = "all"
    config.model_seed = 0
    config.seed = 1

    config.batch_size = 8
    config.num_epochs = 1.0
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.grad_clip_norm = 1.0
    # Epoch fractions: the last fifth of the single pass runs at a tenth of the rate.
    config.optimizer.lr_drop_epochs = (0.8,)
    config.optimizer.lr_drop_factor = 0.1

    config.data.source = "scenes"
    config.data.num_scenes = 19200  # 2,400 steps of 8
    config.data.scene_seed = 1
    config.data.scene_size = 256
    config.data.mixture = {
        "gt_box": 3.0,
        "three_points": 1.0,
        "five_points": 1.0,
        "ten_points": 1.0,
    }
    config.data.occlusion_prob = 0.0
    config.data.use_lsj = True
    config.data.lsj_range = (0.75, 1.25)
    config.data.read_threads = 2

    # 4,096 logits per mask at 64x64: dense is exact and cheaper than 12,544 sampled points.
    config.loss.sampling = "dense"
    # SAM's recipe also fits the IoU head (MSE to the true IoU).
    config.loss.iou_weight = 1.0

    config.log_every_steps = 50
    config.checkpoint_every_steps = 300
    config.keep_checkpoints = 2

    if arg == "stage2":
        # Continues from stage 1's export (set --config.init_checkpoint) on new scenes.
        config.seed = 5
        config.data.scene_seed = 5
        config.data.num_scenes = 12800  # 1,600 steps of 8
        config.optimizer.learning_rate = 3e-4
        config.optimizer.warmup_steps = 50
        config.optimizer.lr_drop_epochs = (0.75,)
    if arg == "clusters":
        config.data.scene_family = "clusters"
        config.data.max_objects = 8
    return config
