"""`python -m gan_dist.bench` end to end on a tiny config: it runs, and its JSON has every
requested row with positive numbers. A functional test: it never asserts a speed."""
import json
import sys
from pathlib import Path

from helpers import base_env, ok, spawn

TINY = ["data.image_size=8", "model.width=8", "train.batch_size=16", "loss.n_critic=5", "--steps", "3", "--warmup", "1",
        "--repeats", "1"]


def bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    (r,) = ok(spawn([sys.executable, "-m", "gan_dist.bench", *TINY, *args, "--json", str(out)],
                    env=base_env(tmp_path), timeout=120))
    return json.loads(out.read_text()), r.out


def test_bench_reports_every_row_with_positive_numbers(tmp_path):
    res, out = bench(tmp_path, "--rows", "plain,ws1,strong2")
    assert list(res["rows"]) == ["plain", "ws1", "strong2"]
    for name, row in res["rows"].items():
        ranks = 2 if name == "strong2" else 1
        assert row["ranks"] == ranks and row["global_batch"] == 16 and row["per_rank_batch"] == 16 // ranks
        assert row["gen_steps_per_s"] > 0 and len(row["steps_per_s_per_repeat"]) == 1
        # images through the critic per generator step: batch * (2 * n_critic + 1), n_critic 5
        assert abs(row["images_per_s"] - row["gen_steps_per_s"] * 16 * 11) < 1e-6 * row["images_per_s"]
        s = row["step"]
        assert 0 < s["min_ms"] <= s["p25_ms"] <= s["median_ms"] <= s["p75_ms"] <= s["max_ms"]
        assert len(row["peak_rss_mb"]) == ranks and all(m > 0 for m in row["peak_rss_mb"])
        assert len(row["cpu_ms_per_step"]) == ranks and all(c > 0 for c in row["cpu_ms_per_step"])
    for ratios in (res["ratios"], res["ratios_cpu"]):
        assert set(ratios) == {"ws1/plain", "strong2/ws1"} and all(v > 0 for v in ratios.values())
    assert res["synthetic"] is False
    for name in ("plain", "ws1", "strong2", "ws1/plain"):
        assert name in out  # the table on stdout


def test_bench_uses_synthetic_data_when_the_dataset_is_missing(tmp_path):
    # the chapter-5 config (RGB, 2 classes) with an ImageFolder root that does not exist; the
    # gp_cost row builds a Trainer on the synthetic data
    glasses = Path(__file__).parents[1] / "configs" / "glasses_cwgan_gp.yaml"
    res, out = bench(tmp_path, "--config", str(glasses), f"data.root={tmp_path}/none", "--rows", "gp_cost")
    assert res["synthetic"] is True and "synthetic data" in out
    assert res["config"]["data"]["channels"] == 3
    gp = res["rows"]["gp_cost"]
    assert gp["with_gp"]["median_ms"] > 0 and gp["without_gp"]["median_ms"] > 0 and gp["ratio"] > 0
    assert res["ratios"]["gp_cost"] == gp["ratio"] and res["ratios_cpu"]["gp_cost"] == gp["ratio_cpu"] > 0


def test_the_micro_batch_axis_keeps_the_global_batch_and_allocates_less(tmp_path):
    res, out = bench(tmp_path, "--rows", "ws1,micro2,micro4,ada")
    rows = res["rows"]
    assert [rows[r]["global_batch"] for r in rows] == [16, 16, 16, 16] and "micro2/ws1" in res["ratios"]
    assert 0 < res["ratios"]["ada/ws1"] < 1.5  # the augmentation's cost per step: a row of its own
    alloc = [rows[r]["step_alloc_mb"][0] for r in ("ws1", "micro2", "micro4")]
    assert 0 < alloc[2] < alloc[1] < alloc[0], alloc  # the memory a step allocates falls with A
    assert "step " in out


def test_startup_bench_reports_the_floor_and_both_rank_counts(tmp_path):
    out = tmp_path / "startup.json"
    (r,) = ok(spawn([sys.executable, "-m", "gan_dist.bench", "--startup", "--repeats", "1", "data.image_size=8",
                     "model.width=8", "train.batch_size=16", "eval.every=0", "--json", str(out)],
                    env=base_env(tmp_path), timeout=200))
    res = json.loads(out.read_text())
    assert len(res["floor"]) == 2 and set(res["train"]) == {"1 rank(s)", "2 rank(s)"}
    for figure in (*res["floor"].values(), *res["train"].values()):
        assert len(figure["runs_s"]) == 1 and 0 < figure["min_s"] <= figure["median_s"] <= figure["max_s"]
    assert "python -m gan_dist.train, 2 rank(s), to step 1" in r.out
