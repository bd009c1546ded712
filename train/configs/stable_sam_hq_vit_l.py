r"""Stable-SAM on HQ-SAM (the paper's Table 6): DSP + DRP trained with RTS on HQSeg-44K over a
frozen HQ-SAM ViT-L (`hq_vit_l`, the plugins in its decoder's transformer), otherwise the recipe
of stable_sam_vit_l.py: global batch 32, Adam lr 1e-3, no weight decay, 1 epoch (1,385 steps).

Command (one host with 8 GPUs; the batch is split over all devices):
  python -m stablesam_jax.train --config train/configs/stable_sam_hq_vit_l.py \
    --workdir runs/ssam_hq_l --config.sam_checkpoint=ckpt/sam_hq_vit_l \
    --config.data.root=/data/hqseg44k

`ckpt/sam_hq_vit_l` is the official sam_hq_vit_l.pth converted with convert/torch_to_flax.py.

Expected result: `runs/ssam_hq_l/export/plugins`, loadable with
`build_stable_sam("hq_vit_l", "ckpt/sam_hq_vit_l", plugins="runs/ssam_hq_l/export/plugins")`.
The paper (Table 6) finds the plugins make HQ-SAM robust to poor prompts as they do SAM; its
numbers are not restated here. Not reproduced here: no weights or data can be downloaded on the
machines this project is built on.
"""

from stablesam_jax.training import paper_config


def get_config(arg: str | None = None):
    config = paper_config()
    config.model_type = "hq_vit_l"
    return config
