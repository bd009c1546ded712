"""`python -m stablesam_jax.train`: the training command (`stablesam_jax.commands.train`)."""

from stablesam_jax.commands.train import run

if __name__ == "__main__":
    run()
