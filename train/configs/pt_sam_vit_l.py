r"""PT-SAM baseline: only the decoder's output tokens (IoU + mask tokens) and the single-mask
output MLP of SAM ViT-L are trained (141,088 weights, the paper's "0.13 M"), same data, prompts
and schedule as Stable-SAM; no plugins.

Command:
  python -m stablesam_jax.train --config train/configs/pt_sam_vit_l.py --workdir runs/pt_sam_l \
    --config.sam_checkpoint=ckpt/sam_vit_l --config.data.root=/data/hqseg44k

Expected result: `runs/pt_sam_l/export/sam`, a full SAM checkpoint; the paper reports PT-SAM
between SAM and Stable-SAM (prompt tuning alone cannot move where the decoder attends).
"""

from stablesam_jax.training import paper_config


def get_config(arg: str | None = None):
    config = paper_config()
    config.trainable = "prompt_tokens"
    config.with_plugins = False
    return config
