"""The GPU check: what a lent GPU measures in one device call (`make gpu-check`, docs/development.md "The GPU
check"). Runs the suite's CUDA tests (every test parametrized over helpers.DEVICES, its cuda
case), then `python -m gan_dist.bench` rows: the default config and the glasses config at 64
and 128, fp32 / TF32 / bf16, channels_last, compile, synthetic data against a real zip with 0
and 8 loader workers, and the plain hand-written loop beside them. Everything stays inside one
deadline (--budget, default 290 s): each step gets what is left, a step the deadline cuts is
recorded as not reached. OUT/gpu_check.json is rewritten after every step (at most 4 files in
OUT), and a table is printed last.

--dry-run (or no CUDA): the same script on the CPU, every CUDA step reported as skipped, one
tiny CPU bench row for the JSON's own path (the suite runs it: tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the CUDA cases of the device-parametrized tests (marked cuda: helpers.DEVICES)
CUDA_TESTS = ["tests/test_cuda.py", "tests/test_fast_paths.py", "tests/test_resume.py", "tests/test_export.py",
              "tests/test_zip_data.py"]
BENCH = ["--steps", "10", "--warmup", "5", "--repeats", "3"]
FP32, TF32, BF16 = ["train.precision=fp32", "train.tf32=false"], ["train.precision=fp32", "train.tf32=true"], \
    ["train.precision=bf16"]
GLASSES = ["--config", "configs/glasses_cwgan_gp.yaml", "train.batch_size=64"]


def bench_rows(zip_path: str) -> list[tuple[str, list[str]]]:
    """(label, bench arguments) in the order they run: the cheap, telling ones first."""
    at = {size: GLASSES + [f"data.image_size={size}"] for size in (64, 128)}
    real = [f"data.root={zip_path}", "data.name=zip", "data.channels=3"]
    return [
        ("digits16 fp32: plain, gan_dist", ["--rows", "plain,ws1", *FP32]),
        ("digits16 tf32", ["--rows", "ws1", *TF32]),
        ("digits16 bf16", ["--rows", "ws1", *BF16]),
        ("glasses64 tf32: plain, gan_dist", ["--rows", "plain,ws1", *at[64], *TF32]),
        ("glasses64 bf16", ["--rows", "ws1", *at[64], *BF16]),
        ("glasses64 bf16 channels_last", ["--rows", "ws1", *at[64], *BF16, "train.channels_last=true"]),
        ("glasses128 tf32: plain, gan_dist (synthetic)", ["--rows", "plain,ws1", *at[128], *TF32, "--synthetic"]),
        ("glasses128 bf16 (synthetic)", ["--rows", "ws1", *at[128], *BF16, "--synthetic"]),
        ("glasses128 tf32 zip, 0 workers", ["--rows", "ws1", *at[128], *TF32, *real, "data.num_workers=0"]),
        ("glasses128 tf32 zip, 8 workers", ["--rows", "ws1", *at[128], *TF32, *real, "data.num_workers=8"]),
        ("glasses128 bf16 compile (synthetic)", ["--rows", "ws1", *at[128], *BF16, "train.compile=true",
                                                 "--synthetic"]),
        # the paper's CIFAR-10 network (768 wide, 96 groups) at a batch one GPU takes
        ("r3gan cifar10 bf16 (synthetic)", ["--rows", "ws1", "--config", "configs/r3gan_cifar10.yaml", *BF16,
                                            "train.batch_size=64", "--synthetic"]),
        ("r3gan cifar10 tf32 (synthetic)", ["--rows", "ws1", "--config", "configs/r3gan_cifar10.yaml", *TF32,
                                            "train.batch_size=64", "--synthetic"]),
    ]


class Report:
    """OUT/gpu_check.json, rewritten whole (atomically) after every step."""

    def __init__(self, out: Path):
        self.out, self.data = out, {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "env": {}, "tests": {}, "rows": {}}
        out.mkdir(parents=True, exist_ok=True)

    def flush(self) -> None:
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.out / "gpu_check.json")


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpus": len(os.sched_getaffinity(0))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cudnn=torch.backends.cudnn.version())
    for name in ("torchvision", "kornia", "submitit", "numpy"):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 (reported, not fatal: the tests say what it breaks)
            env[name] = f"missing ({type(e).__name__})"
    return env


def run(cmd: list[str], timeout: float, log) -> tuple[int, str]:
    """rc (124: the deadline) and the output, which goes to the log as well."""
    log(f"$ {' '.join(cmd)}  (at most {timeout:.0f} s)")
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, timeout),
                           env=dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled"))
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), 124
    log(out[-4000:])
    return rc, out


def cuda_tests(report: Report, cuda: bool, left: float, log) -> None:
    xml = report.out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs", f"--junitxml={xml}",
           *([] if cuda else ["-n", "0"]), *CUDA_TESTS]
    rc, out = run(cmd, left, log)
    tail = [ln for ln in out.splitlines() if ln.strip()][-1:] or [""]
    report.data["tests"] = {"command": " ".join(cmd[1:]), "rc": rc, "summary": tail[0],
                            "status": "ran" if cuda else "skipped: no CUDA (the cuda cases skip; their CPU twins run "
                                                         "in the suite)"}


def make_zip(tmp: Path, log) -> str:
    """A real zip of 1,024 RGB 128x128 images (smooth noise, photo-like compression), made here."""
    from gan_dist.data.dataset_tool import convert
    from gan_dist.tools.loader_bench import _images

    folder = tmp / "folder"
    _images(folder, 1024, 128, classes=2)
    convert(folder, tmp / "glasses128.zip", workers=min(8, len(os.sched_getaffinity(0))))
    log(f"made {tmp / 'glasses128.zip'}")
    return str(tmp / "glasses128.zip")


def bench(report: Report, label: str, args: list[str], deadline: float, log) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_row_") as t:
        out = Path(t) / "row.json"
        cmd = [sys.executable, "-m", "gan_dist.bench", *BENCH, *args, "--json", str(out),
               "--timeout", str(max(10, int(deadline - time.monotonic())))]
        rc, text = run(cmd, deadline - time.monotonic(), log)
        row = {"command": "python -m gan_dist.bench " + " ".join(cmd[3:-4]), "rc": rc}
        if rc == 0 and out.exists():
            res = json.loads(out.read_text())
            row.update(rows={k: {f: v.get(f) for f in ("images_per_s", "gen_steps_per_s", "step", "cuda_max_mb",
                                                        "peak_rss_mb", "cpu_per_wall")} for k, v in res["rows"].items()},
                       ratios=res["ratios"], synthetic=res["synthetic"])
        else:
            row["error"] = "the deadline" if rc == 124 else (text.strip().splitlines() or [""])[-1][:300]
        report.data["rows"][label] = row


def targets(rows: dict) -> dict:
    """The issue's targets from the rows that ran (None: a row missing)."""
    def ips(label, row="ws1"):
        return rows.get(label, {}).get("rows", {}).get(row, {}).get("images_per_s")

    def ratio(a, b):
        return None if a is None or b is None else round(a / b, 3)
    return {"gan_dist / plain at TF32, glasses128 (>= 1.0)": ratio(ips("glasses128 tf32: plain, gan_dist (synthetic)"),
                                                                   ips("glasses128 tf32: plain, gan_dist (synthetic)",
                                                                       "plain")),
            "bf16 / tf32 at 128x128 (>= 1.3)": ratio(ips("glasses128 bf16 (synthetic)"),
                                                     ips("glasses128 tf32: plain, gan_dist (synthetic)")),
            "zip 8 workers / synthetic at 128 (>= 0.9)": ratio(ips("glasses128 tf32 zip, 8 workers"),
                                                               ips("glasses128 tf32: plain, gan_dist (synthetic)"))}


def table(report: Report) -> str:
    lines = [f"GPU check, {report.data['env'].get('device', 'no CUDA device')} (torch {report.data['env']['torch']})",
             f"tests: {report.data['tests'].get('status')}: {report.data['tests'].get('summary')}",
             f"{'row':46} {'images/s ws1':>12} {'plain':>10} {'step ms':>8} {'cuda MB':>8}"]
    for label, row in report.data["rows"].items():
        r = row.get("rows", {})
        ws1, plain = r.get("ws1", {}), r.get("plain", {})
        if not r:
            lines.append(f"{label:46} {row.get('error') or row.get('status', '')}")
            continue
        cuda = (ws1.get("cuda_max_mb") or [None])[0]
        lines.append(f"{label:46} {ws1.get('images_per_s', 0):12.0f} {plain.get('images_per_s') or 0:10.0f} "
                     f"{(ws1.get('step') or {}).get('median_ms', 0):8.1f} {cuda if cuda is not None else '-':>8}")
    lines += [f"{k}: {v}" for k, v in report.data.get("targets", {}).items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for the JSON (default $OUT)")
    p.add_argument("--budget", type=float, default=290.0, help="seconds for everything (default 290)")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run: CUDA steps reported as skipped")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget
    report = Report(Path(args.out))
    log_file = open(report.out / "gpu_check.log", "w")

    def log(text: str) -> None:
        log_file.write(text + "\n")
        log_file.flush()

    report.data["env"] = environment()
    cuda = report.data["env"]["cuda_available"] and not args.dry_run
    report.data["mode"] = "gpu" if cuda else "dry run (CPU)"
    report.flush()
    print(f"gpu_check: {report.data['mode']}, {report.data['env']}", flush=True)
    cuda_tests(report, cuda, min(130.0, deadline - time.monotonic() - 20), log)
    report.flush()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as t:
        if cuda:
            rows = bench_rows(make_zip(Path(t), log))
        else:  # one tiny CPU row: the bench call and the JSON's path; the GPU rows listed, skipped
            rows = [("cpu smoke: plain, gan_dist (8x8)", ["--rows", "plain,ws1", "data.image_size=8", "model.width=8",
                                                           "train.batch_size=16", "--steps", "2", "--warmup", "1",
                                                           "--repeats", "1", "--cpu"])]
            for label, row_args in bench_rows("ZIP"):
                report.data["rows"][label] = {"command": "python -m gan_dist.bench " + " ".join(BENCH + row_args),
                                              "status": "skipped: no CUDA"}
        for label, row_args in rows:
            if time.monotonic() > deadline - 5:
                report.data["rows"][label] = {"status": "not reached: the deadline"}
            else:
                print(f"gpu_check: {label} ...", flush=True)
                bench(report, label, row_args, deadline, log)
            report.flush()
    report.data["targets"] = targets(report.data["rows"])
    report.data["seconds"] = round(time.monotonic() - start, 1)
    report.flush()
    log_file.close()
    print(table(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
