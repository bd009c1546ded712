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
"""
