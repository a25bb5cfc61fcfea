import torch

from gan_dist.runs.export import load_generator
from gan_dist.training.ema import EMA
from helpers import TINY, latest_ckpt, ok, train


def test_ema_warmup_then_decay():
    g = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(g, decay=0.99)
    with torch.no_grad():
        g.weight.fill_(0.0)
        ema.module.weight.fill_(1.0)
    ema.update(g, step=0)  # warm-up: decay (1+0)/(10+0) = 0.1
    assert torch.allclose(ema.module.weight, torch.tensor([[0.1]]))
    ema.update(g, step=10_000)  # past warm-up: the configured 0.99
    assert torch.allclose(ema.module.weight, torch.tensor([[0.099]]))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_is_saved_used_for_export_and_switchable(tmp_path):
    ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}/run"]))
    state = latest_ckpt(tmp_path / "run")
    ema_w, raw_w = state["generator_ema"]["net.0.weight"], state["generator"]["net.0.weight"]
    assert not torch.equal(ema_w, raw_w)  # it averages, it does not copy
    g_ema, meta = load_generator(tmp_path / "run")
    g_raw, meta_raw = load_generator(tmp_path / "run", ema=False)
    assert meta["ema"] and not meta_raw["ema"]
    assert torch.equal(g_ema.net[0].weight, ema_w) and torch.equal(g_raw.net[0].weight, raw_w)
    ok(train(TINY + ["train.steps=4", "train.ema_decay=0", f"run.dir={tmp_path}/off"]))
    assert "generator_ema" not in latest_ckpt(tmp_path / "off")
