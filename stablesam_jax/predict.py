"""`python -m stablesam_jax.predict`: the predict command (`stablesam_jax.commands.predict`)."""

import sys

from stablesam_jax.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
