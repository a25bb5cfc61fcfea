"""Run on each rank: train with a DDP comm hook on the critic and the generator that counts the
gradient buckets reduced; writes OUT/rank{r}.json with the counts and the number of updates."""
import json
import sys
from pathlib import Path

from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from gan_dist import config, distributed
from gan_dist.training.trainer import Trainer

out = Path(sys.argv[1])
cfg = config.load(None, sys.argv[2:])
world = distributed.setup(distributed.detect(), threads=1)
trainer = Trainer(cfg, world)
counts = {"critic": 0, "generator": 0}


def counting(name):
    def hook(state, bucket):
        counts[name] += 1
        return allreduce_hook(state, bucket)
    return hook


trainer.critic_ddp.register_comm_hook(None, counting("critic"))
trainer.generator_ddp.register_comm_hook(None, counting("generator"))
trainer.fit()
(out / f"rank{world.rank}.json").write_text(json.dumps({
    **counts, "critic_updates": cfg.train.steps * cfg.loss.n_critic, "generator_updates": cfg.train.steps,
    "accumulation": trainer.layout.accumulation}))
trainer.close()
distributed.teardown()
