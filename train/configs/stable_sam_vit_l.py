r"""Stable-SAM, the paper's recipe (Sec. 4 / supplementary): DSP + DRP trained with RTS on
HQSeg-44K over a frozen SAM ViT-L, global batch 32, Adam lr 1e-3, no weight decay, 1 epoch
(44,320 images = 1,385 steps).

Command (one host with 8 GPUs; the batch is split over all devices):
  python -m stablesam_jax.train --config train/configs/stable_sam_vit_l.py --workdir runs/ssam_l \
    --config.sam_checkpoint=ckpt/sam_vit_l --config.data.root=/data/hqseg44k

`ckpt/sam_vit_l` is the official sam_vit_l_0b3195.pth converted with convert/torch_to_flax.py;
`/data/hqseg44k` holds HQ-SAM's data release (DIS5K/, thin_object_detection/, cascade_psp/).

Expected result: `runs/ssam_l/export/plugins` (about 0.08 M weights, ~330 KB), loadable with
`build_stable_sam("vit_l", "ckpt/sam_vit_l", plugins="runs/ssam_l/export/plugins")`. The paper
reports, on the four HQ datasets (DIS-VD, ThinObject-TE, COIFT, HR-SOD), mIoU / mBIoU / mSF
82.3 / 74.1 / 82.3 with a noisy box, 76.9 / 68.4 / 71.1 with 1 point, 84.0 / 75.8 / 84.9 with
3 points (SAM: 48.8 / 42.1 / 39.5, 43.3 / 37.4 / 45.1, 78.7 / 69.5 / 79.3). Not reproduced here:
no weights or data can be downloaded on the machines this project is built on.
"""

from stablesam_jax.training import paper_config


def get_config(arg: str | None = None):
    return paper_config()
