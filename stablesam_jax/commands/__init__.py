"""The command-line programs: each module parses arguments, calls the library and prints.
The commands, and their modules here:

    python -m stablesam_jax.train            commands.train (training config + workdir)
    python -m stablesam_jax.eval             commands.eval (evaluation config)
    python -m stablesam_jax.demo             commands.demo (the end-to-end demo)
    python -m stablesam_jax.predict          commands.predict (one image, one prompt)
    python convert/torch_to_flax.py          commands.convert (official .pth -> checkpoint)
    python -m stablesam_jax.commands.export             serving artifacts
    python -m stablesam_jax.commands.export_pretrained  the demo SAM's packaged weights
    python -m stablesam_jax.commands.bench              encoder / decoder / set_image speed
    python -m stablesam_jax.commands.amg                automatic mask generator speed, SAM vs
                                                        Stable-SAM under grid clicks
    python -m stablesam_jax.commands.cache_bench        cold vs cached process start
    python -m stablesam_jax.commands.device_check       the README's GPU table in one call

Every `main` is wrapped by `_errors.command`: a user's mistake (a bad input, config, checkpoint,
dataset or output path) is one `error:` line and exit status 2, found before the expensive work
and before anything is written (`_outputs`); `--debug` or STABLESAM_DEBUG=1 adds the traceback.
"""
