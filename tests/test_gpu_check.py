"""`make gpu-check DRY=1`: the GPU check's own script on the CPU, as it runs on a lent GPU but for
the CUDA steps, which it reports as skipped; one tiny CPU bench row takes the JSON's path."""
import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import base_env

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_reports_every_step_within_its_budget(tmp_path):
    start = time.monotonic()
    r = subprocess.run([sys.executable, "tests/gpu_check.py", "--dry-run", "--budget", "60", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=base_env(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert time.monotonic() - start < 60
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["mode"] == "dry run (CPU)" and res["env"]["torch"] and "cuda_available" in res["env"]
    assert res["tests"]["rc"] == 0 and res["tests"]["status"].startswith("skipped: no CUDA")
    assert "skipped" in res["tests"]["summary"] and "-m cuda" in res["tests"]["command"]
    smoke = res["rows"].pop("cpu smoke: plain, gan_dist (8x8)")
    assert smoke["rc"] == 0 and all(smoke["rows"][k]["images_per_s"] > 0 for k in ("plain", "ws1"))
    assert len(res["rows"]) >= 10 and all(row["status"] == "skipped: no CUDA" and row["command"].startswith(
        "python -m gan_dist.bench") for row in res["rows"].values())
    assert set(res["targets"]) == {"gan_dist / plain at TF32, glasses128 (>= 1.0)", "bf16 / tf32 at 128x128 (>= 1.3)",
                                   "zip 8 workers / synthetic at 128 (>= 0.9)"}
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert files == ["cuda_tests.xml", "gpu_check.json", "gpu_check.log"]  # the device returns 8 files at most
    assert "tests: skipped: no CUDA" in r.stdout and "glasses128 tf32 zip, 8 workers" in r.stdout
