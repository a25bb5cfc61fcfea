"""Run on each rank: train, then all-gather every parameter and the checksum; then perturb
rank 1 and check that check_consistency catches it; close the trainer, and count the DDP
wrappers still alive while it is referenced (none may outlive the process group). Writes
OUT/rank{r}.json."""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from gan_dist import config, distributed
from gan_dist.training.trainer import Trainer

out = Path(sys.argv[1])
cfg = config.load(None, sys.argv[2:])
world = distributed.setup(distributed.detect(), threads=1)
trainer = Trainer(cfg, world)
trainer.fit()
# generator, critic and the generator EMA (kept on every rank without communication)
params = torch.cat([p.detach().flatten() for m in (trainer.generator, trainer.critic, trainer.ema.module)
                    for p in m.parameters()])
gathered = [torch.zeros_like(params) for _ in range(world.world_size)]
dist.all_gather(gathered, params)
checksums = distributed.gather_floats(distributed.parameter_checksum(trainer.generator, trainer.critic), world)
with torch.no_grad():
    if world.rank == 1:
        next(trainer.generator.parameters()).view(-1)[0] += 1e-3
try:
    distributed.check_consistency(world, trainer.generator, trainer.critic)
    detected = False
except RuntimeError:
    detected = True
trainer.close()
gc.collect()
ddp_alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
(out / f"rank{world.rank}.json").write_text(json.dumps({
    "checksums": checksums, "max_abs_diff": max(float((g - params).abs().max()) for g in gathered),
    "num_params": params.numel(), "drift_detected": detected, "ddp_alive_after_close": ddp_alive}))
distributed.teardown()
