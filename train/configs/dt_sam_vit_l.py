r"""DT-SAM baseline: the whole mask decoder of SAM ViT-L trained with the same data, prompts and
schedule as Stable-SAM (paper Table "comparison with other tuning methods"); no plugins.

Command:
  python -m stablesam_jax.train --config train/configs/dt_sam_vit_l.py --workdir runs/dt_sam_l \
    --config.sam_checkpoint=ckpt/sam_vit_l --config.data.root=/data/hqseg44k

Expected result: `runs/dt_sam_l/export/sam`, a full SAM checkpoint (`build_sam("vit_l",
"runs/dt_sam_l/export/sam")`) with 4.06 M decoder weights changed. The paper reports DT-SAM
below Stable-SAM on every prompt type (it forgets more of SAM's behaviour on COCO).
"""

from stablesam_jax.train_lib import default_config


def get_config(arg: str | None = None):
    config = default_config()  # the paper's recipe: vit_l, batch 32, Adam 1e-3, 1 epoch, HQSeg-44K
    config.model_type = "vit_l"
    config.batch_size = 32
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.data.source = "hqseg44k"
    config.data.num_workers = 8
    config.dtype = "bfloat16"  # compute only; weights, optimizer state and loss stay float32
    config.attention_impl = "folded_cudnn"
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.trainable = "decoder"
    config.with_plugins = False
    config.num_epochs = 1.0
    return config
