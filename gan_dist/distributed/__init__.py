"""The run's place in the world and what ranks do together: world.py (rank, device, backend,
threads, the process group, the DDP wrap), collectives.py (the row rule, gathers, broadcasts,
agreement, consistency checks), launch.py (local ranks in subprocesses for the tools),
slurm.py (what Slurm's environment says), preemption.py (signals -> a flag that only rises),
seeding.py (draws for the global batch). Imports only config and errors."""
from gan_dist.distributed.collectives import (
                                              all_reduce_mean,
                                              barrier,
                                              broadcast_module,
                                              broadcast_object,
                                              check_consistency,
                                              gather_floats,
                                              gather_rows,
                                              max_over_ranks,
                                              on_every_rank,
                                              on_main,
                                              parameter_checksum,
                                              raise_if_any,
                                              rows,
)
from gan_dist.distributed.world import World, adopt, default_threads, detect, initialized, setup, teardown, wrap

__all__ = ["all_reduce_mean", "barrier", "broadcast_module", "broadcast_object", "check_consistency", "gather_floats",
           "gather_rows", "max_over_ranks", "on_every_rank", "on_main", "parameter_checksum", "raise_if_any", "rows",
           "World", "adopt", "default_threads", "detect", "initialized", "setup", "teardown", "wrap"]
