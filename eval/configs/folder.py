"""Any folder of images and binary masks (matched by file stem; mask pixels > 128 are foreground).

Command:
    python -m stablesam_jax.eval --config eval/configs/folder.py \
        --config.datasets.folder.image_dir=/data/mine/images \
        --config.datasets.folder.mask_dir=/data/mine/masks \
        --config.models.sam.checkpoint=ckpt/sam_vit_b --config.models.sam.model_type=vit_b \
        --config.models.stable_sam.checkpoint=ckpt/sam_vit_b \
        --config.models.stable_sam.model_type=vit_b \
        --config.models.stable_sam.plugins=runs/stable_sam/plugins
Images and masks may share one folder (told apart by extension: images .jpg/.jpeg, masks .png).

Expected result: one table (the folder, then "Pooled", identical for a single set) with rows sam and
stable_sam and columns GT Box, Noisy Box, 1 Point, 3 Points (cells mIoU / mBIoU / mSF); on
natural images a trained Stable-SAM is above SAM for Noisy Box and 1 Point, and the two are close
for GT Box. The numbers themselves depend on the data.
"""

from stablesam_jax import evaluation


def get_config():
    config = evaluation.base_config("eval_out/folder")
    config.models.sam = evaluation.model_config("vit_b", "sam")
    config.models.stable_sam = evaluation.model_config("vit_b", "stable_sam")
    config.datasets.folder = evaluation.folder_dataset_config()
    return config
