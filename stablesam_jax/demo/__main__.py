"""`python -m stablesam_jax.demo`: the demo command (`stablesam_jax.commands.demo`)."""

import sys

from stablesam_jax.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
