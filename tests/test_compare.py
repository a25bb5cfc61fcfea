"""Sweeps and their comparison: jobs.submit's grid and --sweep-file (the combinations and their
run directories, checked before anything is submitted; the Slurm run of a grid is in
test_slurm.py), and `python -m gan_dist.compare` on finished and unfinished runs, refusing a
directory that is not a run in one line."""
import json
import sys

from helpers import TINY, ok, one_line_error, spawn, train
from jobs.submit import parse_args, runs


def _dirs(argv):
    # the last run.dir= wins: the one runs() appends
    return [[o for o in j.overrides if o.startswith("run.dir=")][-1].split("/")[-1] for j in runs(parse_args(argv))]


def test_the_sweep_grid_and_file_give_one_run_directory_per_combination(tmp_path):
    base = ["--local", *TINY, f"run.dir={tmp_path}/s"]
    assert _dirs(base + ["--sweep", "model.width=4,8", "--sweep", "loss.n_critic=1,3,5"]) == \
        [f"model.width={w},loss.n_critic={n}" for w in (4, 8) for n in (1, 3, 5)]
    combos = tmp_path / "c.yaml"
    combos.write_text("- {model.width: 4, optim.lr: 1.0e-4}\n- {model.width: 8}\n")
    assert _dirs(base + ["--sweep-file", str(combos)]) == ["model.width=4,optim.lr=0.0001", "model.width=8"]
    assert _dirs(base) == ["s"]
    for args, needle in ((["--sweep", "seed=1,2", "--sweep", "seed=3"], "seed is swept twice"),
                         (["--sweep", "seed"], "expected KEY=V1,V2"),
                         (["--sweep-file", str(tmp_path / "none.yaml")], "cannot be read"),
                         (["--sweep", "model.width=0,4"], "model.width: must be >= 1")):  # before any submission
        try:
            runs(parse_args(base + args))
        except Exception as e:  # UserError: one line
            assert needle in str(e) and "\n" not in str(e), e
        else:
            raise AssertionError(f"{args} was accepted")


def test_compare_tables_finished_and_unfinished_runs_and_refuses_a_non_run(tmp_path):
    args = TINY + ["eval.every=2", "eval.num_samples=64", "train.log_every=2"]
    ok(train(args + ["train.steps=4", "loss.n_critic=1", f"run.dir={tmp_path}/a"]))
    ok(train(args + ["train.steps=4", "loss.n_critic=2", f"run.dir={tmp_path}/b"]))
    # a run still going: its config and the first half of its metrics
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text((tmp_path / "b" / "config.yaml").read_text().replace(
        "n_critic: 2", "n_critic: 3"))
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "c" / "metrics.jsonl").write_text(rows[0] + "\n")
    r = spawn([sys.executable, "-m", "gan_dist.compare", *(str(tmp_path / n) for n in "abc"), "--plot",
               str(tmp_path / "fid.png")])[0]
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("| run | loss.n_critic | step | fid |") and "real vs real" in r.out
    body = {ln.split(" | ")[0].strip("| "): ln for ln in lines[2:] if ln.startswith("|") and not ln.startswith("| real")}
    assert set(body) == {"a", "b", "c"} and "| 2 |" in body["c"]  # c: at step 2
    fids = [json.loads(x)["fid"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
            if "fid" in json.loads(x)]
    assert f"{fids[-1]:.4g} (best {min(fids):.4g}" in body["a"]
    assert (tmp_path / "fid.png").stat().st_size > 0
    one_line_error(spawn([sys.executable, "-m", "gan_dist.compare", str(tmp_path)])[0], "not a run directory")
