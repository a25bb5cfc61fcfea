"""What a process pays before it trains, in fresh interpreters (not the tests' zygote): `--help`
and bad input import nothing heavy; a run imports a library only when its feature is on; the
start-up figure (process start to first step) is reported once per start."""
import json
import sys

import pytest

from helpers import TINY, metrics_rows, ok, one_line_error, spawn

HEAVY = ("torch", "torchvision", "kornia", "wandb", "matplotlib", "sklearn", "scipy", "submitit", "numpy", "PIL")
# python -m gan_dist.train ARGS in a fresh interpreter, then the heavy top-level packages it imported
PROBE = """import json, runpy, sys
sys.argv = ["gan_dist.train", *sys.argv[1:]]
try:
    runpy.run_module("gan_dist.train", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print("HEAVY " + json.dumps(heavy), file=sys.stderr)
sys.exit(code)
""" % (HEAVY,)


def _imports(args: list[str]):
    (r,) = spawn([sys.executable, "-c", PROBE, *args])
    lines = [ln for ln in r.err.splitlines() if ln.startswith("HEAVY ")]
    assert len(lines) == 1, r.err
    r.err = "\n".join(ln for ln in r.err.splitlines() if not ln.startswith("HEAVY "))
    return r, set(json.loads(lines[0][6:]))


def test_help_and_bad_config_import_nothing_heavy(tmp_path):
    r, heavy = _imports(["--help"])
    assert r.rc == 0 and "settings (key, default, meaning" in r.out and heavy == set()
    for bad, needle in ((["train.stepz=3"], "train.stepz"), (["train.steps=abc"], "train.steps"),
                        (["--config", str(tmp_path / "none.yaml")], "none.yaml")):
        r, heavy = _imports([*bad, f"run.dir={tmp_path}/run"])
        one_line_error(r, needle)
        assert heavy == set(), (bad, heavy)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, expected", [([], {"torch", "torchvision", "numpy", "PIL"}),
                                             (["augment.kind=ada", "augment.p=0.5"],  # its rotation: kornia's warp
                                              {"torch", "torchvision", "numpy", "PIL", "kornia"})],
                         ids=["plain", "ada"])
def test_a_run_imports_a_library_only_when_its_feature_is_on(tmp_path, extra, expected):
    # no evaluation, wandb disabled (the default): no wandb, matplotlib, scikit-learn, scipy, submitit
    r, heavy = _imports([*TINY, "train.steps=2", *extra, f"run.dir={tmp_path}/run"])
    assert r.rc == 0, r.err
    assert heavy == expected


def test_start_up_is_reported_once_per_start(tmp_path):
    args = TINY + ["train.log_every=1", f"run.dir={tmp_path}"]
    out = ok(spawn([sys.executable, "-m", "gan_dist.train", *args, "train.steps=2"]))[0].out
    line = [ln for ln in out.splitlines() if ln.startswith("training ")][0]
    seconds = float(line.split("start-up ")[1].split(" s (process start to first step)")[0])
    ok(spawn([sys.executable, "-m", "gan_dist.train", *args, "train.steps=4"]))  # resumed: a figure of its own
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("startup_s" in r) for r in rows] == [True, False, True, False]  # the first row after each start
    assert rows[0]["startup_s"] == pytest.approx(seconds, abs=0.051) and seconds > 0.05 and rows[2]["startup_s"] > 0.05
