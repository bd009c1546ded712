r"""HQ-SAM's recipe (Ke et al., 2023) on SAM ViT-L: only the HQ parts of the decoder are trained
(subset `hq`: the HQ token, its MLP and the three fusion blocks, what the official builder leaves
trainable), on HQSeg-44K for 12 epochs, global batch 32, Adam lr 1e-3 dropped x0.1 at epoch 10,
no weight decay (16,620 steps); no Stable-SAM plugins. The loss is this trainer's point-sampled
BCE + dice (`config.loss.sampling="points"`, 12,544 points, HQ-SAM's settings), taken on the HQ
mask alone (`config.hq_token_only=True`), as HQ-SAM trains. It differs from HQ-SAM's training in
the prompts: this trainer's RTS mixture, not HQ-SAM's box / point / noisy-mask draw.

Command (one host with 8 GPUs; the batch is split over all devices):
  python -m stablesam_jax.train --config train/configs/hq_sam_vit_l.py --workdir runs/hq_sam_l \
    --config.sam_checkpoint=ckpt/sam_hq_vit_l --config.data.root=/data/hqseg44k

`ckpt/sam_hq_vit_l` is the official sam_hq_vit_l.pth converted with convert/torch_to_flax.py
(the HQ parts then start from HQ-SAM's released weights). For HQ-SAM's own run, whose HQ parts
start random, give SAM's weights instead: `--config.hq_from_sam=True
--config.sam_checkpoint=ckpt/sam_vit_l` (the official sam_vit_l_0b3195.pth converted as `vit_l`).

Expected result: `runs/hq_sam_l/export/sam`, a full HQ-SAM checkpoint (1,333,248 weights
trained). The Stable-SAM paper reports HQ-SAM (12 epochs) on the four HQ datasets at noisy-box
mIoU 72.4 (Stable-SAM, 1 epoch: 82.3); evaluate it with eval/configs/hq_paper.py (`hq_sam`).
Not reproduced here: no weights or data can be downloaded on the machines this project is built
on.
"""

from stablesam_jax.training import paper_config


def get_config(arg: str | None = None):
    config = paper_config()
    config.model_type = "hq_vit_l"
    config.trainable = "hq"
    config.hq_token_only = True
    config.with_plugins = False
    config.num_epochs = 12.0
    config.optimizer.lr_drop_epochs = (10,)
    config.optimizer.lr_drop_factor = 0.1
    config.checkpoint_every_steps = 1000
    return config
