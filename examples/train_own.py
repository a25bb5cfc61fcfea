"""Your own launch script: gan_dist.fit with your own models, the CLI's run directory,
checkpoints, exact resume, signals and logging included.

    python examples/train_own.py train.steps=300                         # one process
    torchrun --standalone --nproc_per_node=2 examples/train_own.py ...   # 2 ranks (the same call)

Running it again with the same run.dir resumes. The factory lives in its own module
(own_models.py), so the checkpoint records model.kind=own_models:build and the command line
can rebuild it later: PYTHONPATH=examples python -m gan_dist.export runs/own --out g.pt
"""
import os
import sys

from own_models import build

import gan_dist

if __name__ == "__main__":
    result = gan_dist.fit(None, models=build, overrides=["loss.kind=hinge", "loss.n_critic=2",
                                                         "optim.betas=[0.0,0.999]", "run.dir=runs/own", *sys.argv[1:]])
    if os.environ.get("RANK", "0") == "0":
        print(f"{result.status} at step {result.step}: {result.checkpoint}; last metrics {result.metrics}")
    sys.exit(result.exit_code)
