"""`python -m jobs.submit --config FILE [key=value ...] --nodes N --gpus-per-node G ...`

Submits gan_dist training with submitit: one task per GPU (or --tasks-per-node on CPU-only
partitions); every task runs the same loop as `python -m gan_dist.train`, its rank taken
from submitit's environment. The run directory is fixed (absolute) at submission, so a
requeued job resumes in place. Preemption / time limit: Slurm sends SIGUSR2
`--signal-delay-s` before the end; the ranks agree at the next step boundary, rank 0 saves
that step, submitit requeues, the job resumes. `--local` runs on this machine through
submitit's local executor (debugging without Slurm). `--sweep key=v1,v2` submits a job
array, one run directory per value; several `--sweep` flags make a grid (every combination),
`--sweep-file FILE` lists the combinations (a YAML list of {key: value} mappings); each run
directory is named by its values (`model.width=32,loss.n_critic=3`) under run.dir, and a
requeued task resumes in its own.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import submitit

from gan_dist import cli, config
from gan_dist.errors import UserError, first_line


class TrainingJob(submitit.helpers.Checkpointable):
    """What each task runs. Checkpointable: on SIGUSR2 submitit calls checkpoint() on global
    rank 0 and requeues this same job; the training state it resumes from is the checkpoint
    the ranks wrote together at the stop step (gan_dist.preemption)."""

    def __init__(self, config_file: Optional[str], overrides: list[str]):
        self.config_file, self.overrides = config_file, list(overrides)

    @property
    def run_dir(self) -> Path:
        """The run directory runs() fixed: the last run.dir override, which wins over the user's."""
        return Path([o for o in self.overrides if o.startswith("run.dir=")][-1].split("=", 1)[1])

    def argv(self) -> list[str]:
        return (["--config", self.config_file] if self.config_file else []) + self.overrides

    def __call__(self) -> int:
        # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from Slurm's variables.
        # CUDA_VISIBLE_DEVICES stays as Slurm set it: submitit would set it to the local rank,
        # which leaves no GPU visible under per-task binding (each task sees its own as 0).
        # gan_dist picks cuda:0 when a task sees one GPU, cuda:LOCAL_RANK when it sees the node's.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from gan_dist.cli.train import main

        code = main(self.argv())
        if code == 2:
            raise RuntimeError("gan_dist.train rejected its input (see the error line in the log)")
        return code


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m jobs.submit", description=__doc__.split("\n\n")[1],
                           error_prefix="jobs.submit")
    p.add_argument("--config", help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="gan_dist.train overrides")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU")
    p.add_argument("--tasks-per-node", type=int, help="tasks per node on CPU-only partitions (default: GPUs or 1)")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--signal-delay-s", type=int, default=120, help="SIGUSR2 this long before the time limit")
    p.add_argument("--max-requeues", type=int, default=3, help="time-outs after which the job is not requeued")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm exclusive=true")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append", default=[],
                   help="a job array: one run per value; several: one per combination (a grid)")
    p.add_argument("--sweep-file", metavar="FILE.yaml", help="a job array of the combinations a YAML list of "
                                                             "{key: value} mappings gives")
    p.add_argument("--local", action="store_true", help="submitit's local executor: this machine, no Slurm")
    p.add_argument("--name", default="gan_dist")
    return p.parse_args(argv)


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.replace("-", "_")] = value
    return out


def check_flags(args: argparse.Namespace) -> int:
    """Every flag checked before anything is submitted or written; returns the world size."""
    positive = {"--nodes": args.nodes, "--cpus-per-task": args.cpus_per_task, "--timeout-min": args.timeout_min,
                "--tasks-per-node": args.tasks_per_node if args.tasks_per_node is not None else 1}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag}: must be at least 1, got {value}")
    for flag, value in {"--gpus-per-node": args.gpus_per_node, "--max-requeues": args.max_requeues,
                        "--signal-delay-s": args.signal_delay_s}.items():
        if value < 0:
            raise UserError(f"{flag}: must be >= 0, got {value}")
    if args.mem_gb is not None and not args.mem_gb > 0:
        raise UserError(f"--mem-gb: must be positive, got {args.mem_gb}")
    if args.signal_delay_s >= args.timeout_min * 60:
        raise UserError(f"--signal-delay-s: {args.signal_delay_s} s is not before the end of a "
                        f"{args.timeout_min}-minute job (--timeout-min)")
    if args.gpus_per_node and args.tasks_per_node not in (None, args.gpus_per_node):
        raise UserError(f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {args.gpus_per_node}: "
                        "gan_dist runs one task (rank) per GPU")
    _key_values(args.slurm, "--slurm")
    return args.nodes * (args.tasks_per_node or max(args.gpus_per_node, 1))


def variants(args: argparse.Namespace) -> list[list[str]]:
    """The sweep's combinations as override lists ([[]]: no sweep): the grid of the --sweep
    flags, or the --sweep-file's list; every key=value checked to be one."""
    import itertools

    if args.sweep and args.sweep_file:
        raise UserError("--sweep and --sweep-file: one or the other")
    if args.sweep_file:
        import yaml

        try:
            combos = yaml.safe_load(Path(args.sweep_file).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"--sweep-file {args.sweep_file}: cannot be read ({first_line(e)})") from None
        if not (isinstance(combos, list) and combos and all(isinstance(c, dict) and c for c in combos)):
            raise UserError(f"--sweep-file {args.sweep_file}: expected a non-empty YAML list of {{key: value}} mappings")
        return [[f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in c.items()] for c in combos]
    axes, keys = [], set()
    for item in args.sweep:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--sweep {item!r}: expected KEY=V1,V2,...")
        if any(not v for v in values.split(",")):
            raise UserError(f"--sweep {item!r}: an empty value")
        if key in keys:
            raise UserError(f"--sweep {item!r}: {key} is swept twice")
        keys.add(key)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def runs(args: argparse.Namespace) -> list[TrainingJob]:
    """One job per sweep combination; each config validated and its run.dir made absolute here."""
    world_size = check_flags(args)
    jobs, names = [], set()
    for extra in variants(args):
        cfg = config.load(args.config, args.overrides + extra)
        config.check_world(cfg, world_size)
        run_dir = Path(cfg.run.dir)
        if extra:  # one directory per combination, beside each other, named by its values
            name = ",".join(extra).replace("/", "_")
            if name in names:
                raise UserError(f"--sweep: the combination {name} comes twice")
            names.add(name)
            run_dir = run_dir / name
        overrides = args.overrides + extra + [f"run.dir={run_dir.resolve()}"]
        jobs.append(TrainingJob(str(Path(args.config).resolve()) if args.config else None, overrides))
    return jobs


def make_executor(args: argparse.Namespace, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else None,
                                     slurm_max_num_timeout=args.max_requeues)
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    params = dict(name=args.name, nodes=args.nodes, tasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout_min)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if executor.cluster == "slurm":
        # --cpus-per-task to srun too: since Slurm 22.05 a step does not inherit it from sbatch,
        # and each task would get (and, bound, be pinned to) one CPU.
        slurm = dict(slurm_signal_delay_s=args.signal_delay_s, slurm_srun_args=[f"--cpus-per-task={args.cpus_per_task}"],
                     slurm_additional_parameters=_key_values(args.slurm, "--slurm"))
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(args, key):
                slurm[f"slurm_{key}"] = getattr(args, key)
        params.update(slurm)
    executor.update_parameters(**params)
    return executor


def submit(argv: Optional[list[str]] = None) -> list:
    """Submit and return the submitit jobs (tests and notebooks use this)."""
    args = parse_args(argv)
    jobs = runs(args)
    # a sweep's logs beside its run directories, a single run's inside its own
    folder = (jobs[0].run_dir.parent if args.sweep or args.sweep_file else jobs[0].run_dir) / "submitit"
    executor = make_executor(args, folder)
    if len(jobs) == 1:
        submitted = [executor.submit(jobs[0])]
    else:
        with executor.batch():
            submitted = [executor.submit(job) for job in jobs]
    for job, spec in zip(submitted, jobs):
        print(f"submitted job {job.job_id}: run dir {spec.run_dir}\n  stdout {job.paths.stdout}\n  stderr {job.paths.stderr}",
              flush=True)
    return submitted


def main(argv: Optional[list[str]] = None) -> int:
    try:
        submit(argv)
    except UserError as e:
        return cli.print_error(str(e), prefix="jobs.submit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
