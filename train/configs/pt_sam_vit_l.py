r"""PT-SAM baseline: only the decoder's output tokens (IoU + mask tokens) and the single-mask
output MLP of SAM ViT-L are trained (141,088 weights, the paper's "0.13 M"), same data, prompts
and schedule as Stable-SAM; no plugins.

Command:
  python -m stablesam_jax.train --config train/configs/pt_sam_vit_l.py --workdir runs/pt_sam_l \
    --config.sam_checkpoint=ckpt/sam_vit_l --config.data.root=/data/hqseg44k

Expected result: `runs/pt_sam_l/export/sam`, a full SAM checkpoint; the paper reports PT-SAM
between SAM and Stable-SAM (prompt tuning alone cannot move where the decoder attends).
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
    config.trainable = "prompt_tokens"
    config.with_plugins = False
    config.num_epochs = 1.0
    return config
