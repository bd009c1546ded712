r"""DT-SAM baseline: the whole mask decoder of SAM ViT-L trained with the same data, prompts and
schedule as Stable-SAM (paper Table "comparison with other tuning methods"); no plugins.

Command:
  python -m stablesam_jax.train --config train/configs/dt_sam_vit_l.py --workdir runs/dt_sam_l \
    --config.sam_checkpoint=ckpt/sam_vit_l --config.data.root=/data/hqseg44k

Expected result: `runs/dt_sam_l/export/sam`, a full SAM checkpoint (`build_sam("vit_l",
"runs/dt_sam_l/export/sam")`) with 4.06 M decoder weights changed. The paper reports DT-SAM
below Stable-SAM on every prompt type (it forgets more of SAM's behaviour on COCO).
"""

from stablesam_jax.training import paper_config


def get_config(arg: str | None = None):
    config = paper_config()
    config.trainable = "decoder"
    config.with_plugins = False
    return config
