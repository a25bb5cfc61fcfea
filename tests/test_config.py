import sys
from pathlib import Path

import pytest
import yaml

from gan_dist import config
from gan_dist.errors import UserError
from helpers import one_line_error, spawn, train

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_digits_wgan_gp_and_match_default_yaml():
    cfg = config.load()
    assert (cfg.data.name, cfg.model.kind, cfg.loss.kind) == ("digits", "dcgan", "wgan_gp")
    assert (cfg.loss.gp_lambda, cfg.loss.n_critic, cfg.optim.lr, cfg.optim.betas) == (10.0, 3, 2e-4, [0.0, 0.9])
    assert config.to_dict(config.load(str(REPO / "configs/default.yaml"))) == config.to_dict(cfg)


def test_yaml_then_overrides_with_lists_and_floats(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {steps: 7}\nmodel: {kind: mlp}\n")
    cfg = config.load(str(f), ["train.steps=9", "model.hidden=[1000,500,200]", "optim.lr=1e-3",
                               "optim.betas=[0.5,0.99]", "train.threads=null"])
    assert cfg.train.steps == 9 and cfg.model.kind == "mlp" and cfg.model.hidden == [1000, 500, 200]
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.5, 0.99] and cfg.train.threads is None


def test_book_configs_load():
    fashion = config.load(str(REPO / "configs/fashion_mlp_bce.yaml"))
    assert (fashion.model.kind, fashion.loss.kind, fashion.data.name, fashion.model.z_dim) == ("mlp", "bce", "fashion_mnist", 100)
    assert fashion.model.hidden == [1024, 512, 256] and fashion.optim.lr == 1e-4
    exercise = config.load(str(REPO / "configs/fashion_mlp_bce.yaml"), ["model.hidden=[1000,500,200]"])
    assert exercise.model.hidden == [1000, 500, 200]
    glasses = config.load(str(REPO / "configs/glasses_cwgan_gp.yaml"))
    assert (glasses.loss.kind, glasses.loss.gp_lambda, glasses.loss.n_critic, glasses.data.name) == ("wgan_gp", 10.0, 5, "image_folder")
    assert glasses.model.conditional and glasses.data.image_size == 256
    # the chapter-4 variant that trains on real 28x28 digits: the book's MLP, NS + R1
    ch4 = config.load(str(REPO / "configs/digits28_mlp_ns_r1.yaml"))
    assert (ch4.model.kind, ch4.model.hidden, ch4.model.z_dim, ch4.loss.kind, ch4.data.image_size) == \
        ("mlp", [1024, 512, 256], 100, "ns_r1", 28)


def test_roundtrip_through_dict():
    cfg = config.load(None, ["train.steps=3", "model.hidden=[8,4]"])
    assert config.from_dict(yaml.safe_load(config.dump(cfg))) == cfg


@pytest.mark.parametrize("override, needle", [
    ("train.stepz=3", "train.stepz"),
    ("nope=1", "nope"),
    ("train.steps=many", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("model.hidden=12", "model.hidden"),
    ("data.download=maybe", "data.download"),
    ("loss.kind=lsgan", "loss.kind"),
    ("data.name=cifar", "data.name"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.image_size=12", "data.image_size"),
    ("optim.betas=[0.5]", "optim.betas"),
    ("train", "key=value"),
])
def test_bad_config_values_name_the_key(override, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        config.load(None, [override])


@pytest.mark.parametrize("args, needles", [
    (["train.stepz=3"], ["unknown config key 'train.stepz'"]),
    (["train.steps=abc"], ["train.steps", "expected int"]),
    (["loss.kind=lsgan"], ["loss.kind", "lsgan", "wgan_gp"]),
    (["--config", "no/such/file.yaml"], ["config file not found", "no/such/file.yaml"]),
])
def test_cli_bad_config_is_one_line(args, needles, tmp_path):
    one_line_error(train(args + [f"run.dir={tmp_path}/run"])[0], *needles)
    assert not (tmp_path / "run").exists()


def test_cli_invalid_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    one_line_error(train(["--config", str(f)])[0], str(f))


def test_cli_missing_data_root(tmp_path):
    r = train(["--config", str(REPO / "configs/fashion_mlp_bce.yaml"), f"data.root={tmp_path}/none",
               f"run.dir={tmp_path}/run"])[0]
    one_line_error(r, "data.root", f"{tmp_path}/none")
    r = train(["--config", str(REPO / "configs/glasses_cwgan_gp.yaml"), f"data.root={tmp_path}/none",
               f"run.dir={tmp_path}/run"])[0]
    one_line_error(r, "data.root", f"{tmp_path}/none")


def test_cli_batch_not_divisible_by_world_size(tmp_path):
    results = train(["train.batch_size=15", f"run.dir={tmp_path}/run", "train.threads=1"], world_size=2)
    for r in results:
        one_line_error(r, "train.batch_size", "15", "world size 2")


def test_help_lists_usage():
    r = spawn([sys.executable, "-m", "gan_dist.train", "--help"])[0]
    assert r.rc == 0 and "key=value" in r.out and "--config" in r.out


def test_help_lists_every_key_with_its_default_and_meaning_and_print_config_trains_nothing(capsys, tmp_path):
    import yaml

    from gan_dist.cli import train as train_cli

    with pytest.raises(SystemExit) as e:
        train_cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    keys = list(config.settings())
    assert len(keys) >= 60
    for key, default, meaning in keys:
        assert meaning, f"{key} has no meaning"
        line = next((ln for ln in out.splitlines() if ln.split() and ln.split()[0] == key), None)
        assert line is not None and meaning[:30] in line, key
    assert train_cli.main(["--print-config", "train.steps=7", "loss.kind=hinge", f"run.dir={tmp_path}/run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert config.from_dict(printed) == config.load(None, ["train.steps=7", "loss.kind=hinge", f"run.dir={tmp_path}/run"])
    assert not (tmp_path / "run").exists()


def test_r1_gamma_has_its_own_key_and_an_old_gp_lambda_keeps_its_meaning(caplog):
    from gan_dist.training.losses import build_loss

    assert build_loss(config.load(None, ["loss.kind=ns_r1"]).loss).gamma == 10.0
    assert build_loss(config.load(None, ["loss.kind=ns_r1", "loss.r1_gamma=2"]).loss).gamma == 2.0
    with caplog.at_level("WARNING", logger="gan_dist"):
        old = config.load(None, ["loss.kind=ns_r1", "loss.gp_lambda=5"])
    assert build_loss(old.loss).gamma == 5.0 and "write loss.r1_gamma instead" in caplog.text
