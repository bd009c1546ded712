"""`python -m stablesam_jax.eval`: the evaluation command (`stablesam_jax.commands.eval`)."""

from stablesam_jax.commands.eval import run

if __name__ == "__main__":
    run()
