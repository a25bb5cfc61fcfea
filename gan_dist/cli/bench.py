"""`python -m gan_dist.bench [--config FILE] [key=value ...] [--steps 20 --warmup 5 --repeats 3]`:
throughput of gan_dist against a plain hand-written loop (gan_dist/tools/bench.py); `--loader`:
the data stream (tools/loader_bench.py); `--startup`: process start to first step (tools/startup_bench.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from gan_dist import cli
from gan_dist.tools.bench import RANKS, TARGETS, bench, worker


def report(res: dict) -> str:
    lines = [f"{'row':8} {'ranks':>5} {'batch g/r':>9} {'gen steps/s':>11} {'images/s':>9} "
             f"{'step ms median [p25-p75] (min-max)':>36} {'cpu ms/step (cpu/wall)':>24}  "
             "peak RSS MB per rank (+ over imports), step: MB a step allocates"]
    for name, r in res["rows"].items():
        if name == "gp_cost":
            continue
        s, batches = r["step"], f"{r['global_batch']}/{r['per_rank_batch']}"
        util = "/".join(f"{c:.0f} ({u:.2f})" for c, u in zip(r["cpu_ms_per_step"], r["cpu_per_wall"]))
        mem = "/".join(f"{m:.0f} (+{m - i:.0f})" for m, i in zip(r["peak_rss_mb"], r["rss_after_imports_mb"]))
        if r.get("step_alloc_mb") and r["step_alloc_mb"][0] is not None:
            mem += " step " + "/".join(f"{m:.1f}" for m in r["step_alloc_mb"])
        if r["cuda_max_mb"][0] is not None:
            mem += " cuda " + "/".join(f"{m:.0f}" for m in r["cuda_max_mb"])
        lines.append(f"{name:8} {r['ranks']:>5} {batches:>9} {r['gen_steps_per_s']:>11.2f} "
                     f"{r['images_per_s']:>9.0f} {s['median_ms']:>9.1f} [{s['p25_ms']:.1f}-{s['p75_ms']:.1f}] "
                     f"({s['min_ms']:.1f}-{s['max_ms']:.1f}) {util:>24}  {mem}")
    if "gp_cost" in res["rows"]:
        g = res["rows"]["gp_cost"]
        lines.append(f"gp_cost: critic update with WGAN-GP {g['with_gp']['median_ms']:.2f} ms, without the "
                     f"penalty {g['without_gp']['median_ms']:.2f} ms (medians)")
    lines.append(f"{'ratio':12} {'wall':>6} {'cpu':>6}  (cpu: from CPU time per step, as if each rank had its "
                 "own core; CPU runs only)")
    lines += [f"{k:12} {v:6.3f} {res['ratios_cpu'][k]:6.3f}  {'target ' + TARGETS[k] if TARGETS[k] else ''}"
              for k, v in res["ratios"].items()]
    before, after = (" ".join(f"{x:.2f}" for x in res[k]) for k in ("loadavg_before", "loadavg_after"))
    return "\n".join(lines + [f"load average (1/5/15 min): before {before}, after {after}"])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m gan_dist.bench", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file (configs/*.yaml); defaults: the embedded digits run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for gan_dist.train")
    p.add_argument("--steps", type=int, default=20, help="timed generator steps per repeat (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="speeds are medians over the repeats (default 3)")
    p.add_argument("--rows", default=",".join(RANKS), help=f"any of {','.join(RANKS)} (default: all)")
    p.add_argument("--json", metavar="OUT.json", help="also write the results here")
    p.add_argument("--synthetic", action="store_true", help="random data (automatic when the dataset is missing)")
    p.add_argument("--synthetic-size", type=int, default=1024, help="synthetic images (default 1024)")
    p.add_argument("--classes", type=int, help="synthetic classes (default 10; image_folder 2)")
    p.add_argument("--cpu", action="store_true", help="hide CUDA from the workers")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per row before its ranks are killed")
    p.add_argument("--loader", action="store_true", help="the loader benchmark instead (gan_dist/tools/loader_bench.py)")
    p.add_argument("--loader-images", type=int, default=1024, help="--loader: images per layout and size")
    p.add_argument("--startup-files", type=int, default=100_000, help="--loader: files of the start-up comparison")
    p.add_argument("--startup", action="store_true",
                   help="the start-up benchmark instead: process start to first step, 1 and 2 ranks, --repeats runs "
                        "each after one warm-up (gan_dist/tools/startup_bench.py)")
    p.add_argument("--worker", choices=tuple(RANKS), help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)
    if min(args.steps, args.repeats, args.synthetic_size) < 1 or args.warmup < 0 or (args.classes or 1) < 1:
        p.error("--steps, --repeats, --synthetic-size and --classes must be >= 1, --warmup >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        if args.worker:
            worker(args)
            return 0
        if args.startup:
            from gan_dist.tools import startup_bench

            res = startup_bench.run(args.config, args.overrides, repeats=args.repeats, timeout=args.timeout)
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))
            return 0
        if args.loader:
            from gan_dist.tools import loader_bench

            res = loader_bench.run(images=args.loader_images, startup_files=args.startup_files)
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))
            return 0
        res = bench(args)
        print(report(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
