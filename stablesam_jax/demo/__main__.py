"""`python -m stablesam_jax.demo`: the demo command."""

import sys

from stablesam_jax.demo import main

if __name__ == "__main__":
    sys.exit(main())
