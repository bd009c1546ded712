"""Convert an official PyTorch SAM checkpoint into a stablesam-jax (Orbax) checkpoint.

    python convert/torch_to_flax.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \
        --output ckpt/sam_vit_b [--verify]

Exits 0 only when every source key was used, every target weight filled and every shape equal;
otherwise prints the missing/unexpected keys and mismatched shapes and exits 2. `--verify` runs
the official PyTorch model next to the converted one on a generated test image and prints the
largest differences (needs `segment-anything` and torch: pip install 'stablesam-jax[dev]').
"""

import sys

from stablesam_jax.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
