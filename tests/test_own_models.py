"""A user's own models, from outside the package: examples/own_models.py (a ResNet-style
generator and a spectral-norm projection critic) through the CLI and through gan_dist.fit on
2 ranks, resumed bitwise, exported; `gan_dist check` passes them and catches the broken ones
in tests/fixtures/broken_models.py, each with the right message."""
import os
import sys
from pathlib import Path

import pytest
import torch

from gan_dist.cli import train as train_cli
from helpers import TINY, assert_same_state, base_env, finish, latest_ckpt, ok, one_line_error, spawn, start, train

REPO = Path(__file__).resolve().parents[1]
PATHS = os.pathsep.join([str(REPO / "examples"), str(REPO / "tests" / "fixtures")])
OWN = ["model.kind=own_models:build", "loss.kind=hinge", "loss.n_critic=2", "optim.betas=[0.0,0.999]"]


def env() -> dict:
    return dict(base_env(), PYTHONPATH=os.pathsep.join([PATHS, os.environ.get("PYTHONPATH", "")]))


def test_own_models_through_the_cli_on_two_ranks_resume_bitwise_and_export(tmp_path):
    args = TINY + OWN + ["train.checkpoint_every=2"]
    ok(train(args + ["train.steps=2", f"run.dir={tmp_path}/run"], 2, env=env()))
    out = ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/run"], 2, env=env()))[0].out
    assert "resuming from" in out and "own_models:build/hinge" in out
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/straight"], 2, env=env()))
    assert_same_state(latest_ckpt(tmp_path / "run"), latest_ckpt(tmp_path / "straight"))
    assert latest_ckpt(tmp_path / "run")["config"]["model"]["kind"] == "own_models:build"
    ok(spawn([sys.executable, "-m", "gan_dist.export", str(tmp_path / "run"), "--out", str(tmp_path / "g.pt")],
             env=env()))
    g = torch.jit.load(str(tmp_path / "g.pt"))
    images = g(torch.randn(3, 16), torch.eye(10)[:3])
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1


def test_own_launch_script_with_gan_dist_fit_on_two_ranks(tmp_path):
    script = [sys.executable, str(REPO / "examples" / "train_own.py"), *TINY, "train.steps=3",
              f"run.dir={tmp_path}/run"]
    results = ok(finish(start(script, 2, env=env())))
    assert "finished at step 3" in results[0].out and "last metrics {'loss_critic'" in results[0].out
    assert "finished at step" not in results[1].out  # rank 0 reports
    state = latest_ckpt(tmp_path / "run")
    assert state["step"] == 3 and state["config"]["model"]["kind"] == "own_models:build"


def test_fit_in_process_with_a_model_pair_and_resume(tmp_path, capsys):
    import gan_dist
    from gan_dist.data.datasets import DataInfo

    sys.path.insert(0, str(REPO / "examples"))
    from own_models import build

    def pair():
        torch.manual_seed(0)
        from gan_dist import api

        cfg = api._as_config(None, TINY)
        return build(cfg, DataInfo(10, 1, 8))
    generator, critic = pair()
    result = gan_dist.fit(None, models=(generator, critic), overrides=TINY + ["train.steps=2", f"run.dir={tmp_path}"])
    assert (result.status, result.step, result.exit_code) == ("finished", 2, 0)
    # the start-up size estimate leaves no hook on the user's modules (each would run every forward)
    assert sum(len(m._forward_hooks) for net in (generator, critic) for m in net.modules()) == 0
    assert result.checkpoint.name == "step_00000002.pt" and "loss_critic" in result.metrics
    assert result.generator(torch.randn(2, 16), torch.eye(10)[:2]).shape == (2, 1, 8, 8)
    again = gan_dist.fit(None, models=pair(), overrides=TINY + ["train.steps=4", f"run.dir={tmp_path}"])
    assert again.step == 4 and "resuming from" in capsys.readouterr().out
    with pytest.raises(gan_dist.UserError, match="fit\\(models=...\\)"):
        gan_dist.fit(None, models=42, overrides=TINY + [f"run.dir={tmp_path}/x"])


def _check(*args: str):
    return spawn([sys.executable, "-m", "gan_dist.check", *TINY, *args, "--steps", "2"], env=env(), timeout=300)[0]


@pytest.mark.parametrize("args", [OWN, ["model.norm=none", "augment.kind=diffaug"]],
                         ids=["own-models", "builtin-dcgan-diffaug"])
def test_check_passes_good_models(args):
    r = _check(*args)
    assert r.rc == 0, r.out + r.err
    assert "all checks passed" in r.out and "resume (1 + 1 steps) bitwise   ok" in r.out
    if "augment.kind=diffaug" in args:  # the trials trained with it
        assert r.out.count("(with augment.kind=diffaug)") == 2, r.out
    print(r.out)


# Each defect alone is a factory of broken_models; two of them share a pair, checked in one run
# (a check run is ~50 s of 1- and 2-rank trials): every row names its own defect.
@pytest.mark.parametrize("factory, defects", [
    ("two_defects", [("batch-coupled critic           FAIL", "critic.norm (BatchNorm2d): wgan_gp's penalty is per sample"),
                     ("buffers equal on every rank    FAIL", "generator.shift: buffers differ between ranks")]),
    ("unused_parameter", [("parameters without a gradient  FAIL",
                           "critic.auxiliary.weight, critic.auxiliary.bias: not used")]),
])
def test_check_catches_broken_models(factory, defects):
    r = _check(f"model.kind=broken_models:{factory}", "loss.kind=wgan_gp")
    assert r.rc == 1, r.out + r.err
    for row, message in defects:
        assert row in r.out and message in r.out, (row, message, r.out)
    print(r.out)


@pytest.mark.parametrize("factory, message", [
    ("wrong_size", "the generator returned shape [2, 1, 16, 16] for 2 samples, expected [2, 1, 8, 8]"),
    ("no_tanh", "the generator's images must be finite and in [-1, 1]"),
    ("no_z_dim", "the generator needs an int attribute z_dim"),
    ("scores_2d", "the critic returned shape [2, 1] for 2 samples, expected [2]"),
    ("not_a_pair", "the factory must return (generator, critic)"),
    ("missing", "broken_models has no 'missing'"),
])
def test_model_contract_violations_are_one_line_at_start(tmp_path, capsys, monkeypatch, factory, message):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fixtures"))
    try:
        rc = train_cli.main([*TINY, f"model.kind=broken_models:{factory}", f"run.dir={tmp_path}/run"])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    from helpers import Proc

    one_line_error(Proc(rc, out, err), f"model.kind=broken_models:{factory}", message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_fit_takes_a_partial_and_a_callable_object_as_the_factory(tmp_path):
    import functools

    import gan_dist
    from gan_dist import registry

    sys.path.insert(0, str(REPO / "examples"))
    from own_models import build

    class Factory:
        def __call__(self, cfg, info):
            return build(cfg, info)

    assert registry.name_of(build) == "own_models:build" and registry.name_of(Factory()) == ""
    for i, factory in enumerate((functools.partial(build), Factory())):
        result = gan_dist.fit(None, models=factory, overrides=TINY + ["train.steps=1", f"run.dir={tmp_path}/{i}"])
        assert result.step == 1 and latest_ckpt(tmp_path / str(i))["config"]["model"]["kind"].startswith("__main__:")
