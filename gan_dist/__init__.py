"""gan_dist: distributed GAN training (DDP, coordinated critic loop, exact resume, Slurm).

    import gan_dist
    result = gan_dist.fit("configs/my.yaml", models=my_factory)   # see gan_dist/api.py
"""
import time as _time

__version__ = "0.2.0"
IMPORTED = _time.monotonic()  # start-up figures where the kernel's process start time is unknown


def __getattr__(name: str):
    # fit, Result, UserError and DataInfo without importing torch at `import gan_dist`
    if name in ("fit", "Result"):
        from gan_dist import api

        return getattr(api, name)
    if name == "UserError":
        from gan_dist.errors import UserError

        return UserError
    if name == "DataInfo":  # what a dataset factory returns beside its dataset
        from gan_dist.data import DataInfo

        return DataInfo
    raise AttributeError(f"module 'gan_dist' has no attribute {name!r}")
