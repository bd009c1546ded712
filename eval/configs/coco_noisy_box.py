"""Paper Table 3 (MS COCO part): noisy-box prompted mask mAP, IoU bins 0.5-0.6 and 0.6-0.7.

Every non-crowd instance of COCO val2017 is prompted with one noisy box whose IoU with its GT box
lies in the bin; masks at the original size, score = the model's predicted IoU, COCOeval "segm".

Command:
    python -m stablesam_jax.eval --config eval/configs/coco_noisy_box.py \
        --config.coco.coco_val2017.annotation_file=/data/coco/annotations/instances_val2017.json \
        --config.coco.coco_val2017.image_dir=/data/coco/val2017 \
        --config.models.sam.checkpoint=ckpt/sam_vit_l \
        --config.models.stable_sam.checkpoint=ckpt/sam_vit_l \
        --config.models.stable_sam.plugins=runs/ssam_l/export/plugins
    (`--config.coco.coco_val2017.max_images=500` for a quick look; any COCO-format json + image
    folder works, e.g. an SGinW subset.)

Expected result (paper Table 3, ViT-L base):
    | Model      | N-Box (0.5-0.6) mAP | mAP50 | N-Box (0.6-0.7) mAP | mAP50 |
    | sam        | 27.3                | 60.2  | 40.9                | 75.0  |
    | stable_sam | 44.8                | 76.4  | 50.5                | 81.1  |
DT-SAM: 12.2 / 22.7 and 15.8 / 28.7; PT-SAM: 30.2 / 63.4 and 41.3 / 76.5 (enable them as in
hq_paper.py; HQ-SAM likewise, `--config.models.hq_sam.enabled=True
--config.models.hq_sam.checkpoint=ckpt/sam_hq_vit_l`, no paper numbers). Not run here: no
weights or data can be downloaded on these machines.
"""

from stablesam_jax import evaluation


def get_config():
    config = evaluation.base_config("eval_out/coco_noisy_box")
    config.models.sam = evaluation.model_config("vit_l", "sam")
    config.models.stable_sam = evaluation.model_config("vit_l", "stable_sam")
    config.models.dt_sam = evaluation.model_config("vit_l", "sam", enabled=False)
    config.models.pt_sam = evaluation.model_config("vit_l", "sam", enabled=False)
    config.models.hq_sam = evaluation.model_config("hq_vit_l", "sam", enabled=False)
    config.coco.coco_val2017 = evaluation.coco_config()
    return config
