"""Quality in training: divergence (stop, rollback on 2 ranks), the best checkpoint, the cached
reference features, the digits classifier made by the run itself."""
import shutil
import sys

import pytest
import torch

from gan_dist.training.divergence import HISTORY, WARMUP, Monitor
from helpers import TINY, latest_ckpt, load_ckpt, metrics_rows, ok, one_line_error, spawn, train, train_injected

ROLLBACK = ["train.on_divergence=rollback", "train.max_rollbacks=2"]
EVAL = ["eval.every=4", "eval.num_samples=40", "eval.kid_subsets=2", "eval.kid_subset_size=20"]


def records(directory, rank):
    path = directory / f"rank{rank}.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_monitor_judges_against_the_running_median():
    m = Monitor(factor=10.0)
    for v in [1.0, 2.0, 1.5, 1.0, 2.0]:  # warm-up: no verdict before WARMUP windows
        assert m.check({"wasserstein": v * 50, "grad_norm_critic": v}, None) is None
    assert len(m.history["grad_norm_critic"]) == WARMUP
    assert m.check({"wasserstein": 60.0, "grad_norm_critic": 14.9}, None) is None  # median 1.5: 10x is 15
    reason = m.check({"wasserstein": 60.0, "grad_norm_critic": 21.0}, None)  # median now 1.75
    assert "grad_norm_critic 21 is 12x its running median 1.75" in reason and "divergence_factor=10" in reason
    assert len(m.history["grad_norm_critic"]) == WARMUP + 1  # a diverged window does not join the history
    assert m.check({"loss_critic": 1.0}, 17) == "loss is not finite at step 17"
    off = Monitor(factor=0.0)  # off: only non-finite losses count
    for _ in range(HISTORY + 5):
        assert off.check({"wasserstein": 1.0, "grad_norm_critic": 1.0}, None) is None
    assert off.check({"wasserstein": 1e9, "grad_norm_critic": 1e9}, None) is None
    assert len(off.history["wasserstein"]) == HISTORY
    m.rollbacks = 2
    restored = Monitor(10.0)
    restored.load_state_dict(m.state_dict())
    assert restored.state_dict() == m.state_dict()


def test_rollback_on_two_ranks_is_an_exact_resume_with_lower_lr(tmp_path):
    """Rank 1's critic turns NaN before step 7; at the log of step 8 every rank returns to
    step 4's checkpoint with lr x0.5 and trains on: the same as resuming that checkpoint with
    optim.lr halved, bitwise."""
    run, twin, rec = tmp_path / "run", tmp_path / "twin", tmp_path / "rec"
    rec.mkdir()
    ok(train(TINY + ["train.steps=4", f"run.dir={run}"], world_size=2))
    shutil.copytree(run, twin)
    ok(train_injected(TINY + ROLLBACK + ["train.steps=12", f"run.dir={run}"], world_size=2,
                      env_extra={"GAN_DIST_TEST_NAN_AT": "7", "GAN_DIST_TEST_FAULT_RANKS": "1",
                                 "GAN_DIST_TEST_RECORD": str(rec)}))
    r0, r1 = records(rec, 0), records(rec, 1)
    rollbacks = [ln for ln in r0 if ln.startswith("rollback")]
    assert rollbacks == ["rollback 8 -> 4 lr 5e-05"], r0
    assert [ln for ln in r1 if ln.startswith("rollback")] == rollbacks  # same step, same decision
    final0, final1 = [ln for ln in r0 if ln.startswith("final")], [ln for ln in r1 if ln.startswith("final")]
    assert final0 == final1 and final0[0].startswith("final 12 "), (final0, final1)  # identical parameters

    state = latest_ckpt(run)
    assert state["step"] == 12 and state["divergence"]["rollbacks"] == 1
    assert state["opt_generator"]["param_groups"][0]["lr"] == pytest.approx(5e-5)
    rows = metrics_rows(run)
    event = [r for r in rows if "rollback_from" in r]
    assert event == [{"step": 4, "rollback_from": 8, "rollbacks": 1, "lr": pytest.approx(5e-5)}], event
    assert [r["step"] for r in rows if "loss_critic" in r] == [2, 4, 6, 8, 10, 12]  # the replay, once

    ok(train(TINY + ["train.steps=12", "optim.lr=5e-5", f"run.dir={twin}"], world_size=2))
    twin_state = latest_ckpt(twin)
    for net in ("generator", "critic", "generator_ema"):
        for name, t in state[net].items():
            assert torch.equal(t, twin_state[net][name]), f"{net}.{name}"
    assert state["data"] == twin_state["data"]

    # resumed after a rollback, the run keeps the lower learning rate
    ok(train(TINY + ROLLBACK + ["train.steps=14", f"run.dir={run}"]))
    assert latest_ckpt(run)["opt_generator"]["param_groups"][0]["lr"] == pytest.approx(5e-5)


def test_explosion_is_caught_and_stop_keeps_checkpoints(tmp_path):
    # log every step: WARMUP windows of history before the blow-up at step 9
    args = TINY + ["train.log_every=1", "train.divergence_factor=5", "train.steps=12", f"run.dir={tmp_path}"]
    r = train_injected(args, env_extra={"GAN_DIST_TEST_BLOWUP_AT": "9"})[0]
    line = one_line_error(r, "running median", "train.divergence_factor=5", "train.on_divergence=rollback")
    assert "x its running median" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == ["step_00000004.pt",
                                                                                     "step_00000008.pt"]


def test_rollback_limits_are_one_line_errors(tmp_path):
    # no checkpoint yet to return to
    r = train_injected(TINY + ROLLBACK + ["train.steps=6", f"run.dir={tmp_path / 'a'}"],
                       env_extra={"GAN_DIST_TEST_NAN_AT": "2"})[0]
    one_line_error(r, "not finite at step 2", "no checkpoint to roll back to yet", "train.checkpoint_every")
    # train.max_rollbacks=0: a rollback is never allowed
    r = train_injected(TINY + ["train.on_divergence=rollback", "train.max_rollbacks=0", "train.steps=8",
                               f"run.dir={tmp_path / 'b'}"], env_extra={"GAN_DIST_TEST_NAN_AT": "6"})[0]
    one_line_error(r, "stopped after 0 rollback(s)", "train.max_rollbacks=0")
    for bad, needle in [("train.on_divergence=retry", "train.on_divergence"),
                        ("train.rollback_lr_factor=0", "train.rollback_lr_factor"),
                        ("train.divergence_factor=0.5", "train.divergence_factor"),
                        ("train.keep_best=loss", "train.keep_best: unknown metric 'loss'"),
                        ("train.keep_best=fid", "needs evaluations")]:
        one_line_error(train(TINY + [bad, f"run.dir={tmp_path / 'c'}"])[0], needle)


def test_best_checkpoint_reference_cache_export_and_sample(tmp_path):
    run, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    args = TINY + EVAL + ["train.keep_best=recall", f"run.dir={run}"]
    ok(train_injected(args + ["train.steps=8"], env_extra={"GAN_DIST_TEST_RECORD": str(rec)}))
    evals = [r for r in metrics_rows(run) if "recall" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for key in ("fid", "kid", "kid_std", "precision", "recall", "cond_acc", "fid_class_mean", "fid_class_max",
                "ref_fid", "ref_recall", "ref_cond_acc", "fid_class/0"):
        assert key in evals[0], key
    best_row = max(evals, key=lambda r: r["recall"])  # the first of equals: a tie does not improve
    best = load_ckpt(run / "checkpoints" / "best.pt")
    assert best["best"] == {"metric": "recall", "value": best_row["recall"], "step": best_row["step"]}
    assert best["step"] == best_row["step"]
    # the real side is computed once: a resumed run reads RUN_DIR/eval/ instead of loading real images
    assert len(list((run / "eval").glob("reference_*.pt"))) == 1
    loads = [ln for ln in records(rec, 0) if ln.startswith("real")]
    assert len(loads) == 2, loads  # the reference half and the held-out half
    ok(train_injected(args + ["train.steps=12"], env_extra={"GAN_DIST_TEST_RECORD": str(rec)}))
    assert [ln for ln in records(rec, 0) if ln.startswith("real")] == loads
    evals = [r for r in metrics_rows(run) if "recall" in r]
    assert [r["step"] for r in evals] == [4, 8, 12] and evals[0]["ref_fid"] == evals[2]["ref_fid"]
    best_row = max(evals, key=lambda r: r["recall"])
    assert load_ckpt(run / "checkpoints" / "best.pt")["best"]["step"] == best_row["step"]

    out = tmp_path / "g.pt"
    r = ok(spawn([sys.executable, "-m", "gan_dist.export", str(run), "--best", "--out", str(out)]))[0]
    assert f"exported step {best_row['step']} (best recall" in r.out and out.is_file()
    r = ok(spawn([sys.executable, "-m", "gan_dist.sample", str(run), "--best", "--n", "10",
                  "--out", str(tmp_path / "s.png"), "--seed", "1"]))[0]
    assert f"step {best_row['step']}" in r.out and (tmp_path / "s.png").is_file()
    one_line_error(spawn([sys.executable, "-m", "gan_dist.export", str(tmp_path / "rec"), "--best",
                          "--out", str(out)])[0], "--best: no", "best.pt")


def test_the_digits_classifier_is_made_once_by_rank_0(tmp_path, monkeypatch):
    """eval.every on the default job needs no manual step: rank 0 creates the classifier in the
    cache while rank 1 waits, both evaluate with it; the next run finds it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GAN_DIST_CACHE", str(cache))
    results = ok(train(TINY + EVAL + ["train.steps=4", f"run.dir={tmp_path / 'run'}"], world_size=2))
    created = [ln for r in results for ln in (r.out + r.err).splitlines() if "creating the digits classifier" in ln]
    assert len(created) == 1, created
    assert (cache / "digits_classifier_8.pt").is_file()
    assert "fid" in metrics_rows(tmp_path / "run")[-1]
    results = ok(train(TINY + EVAL + ["train.steps=4", f"run.dir={tmp_path / 'again'}"]))
    assert "creating" not in results[0].out + results[0].err


def test_default_evaluation_steps_aside_for_data_it_cannot_measure(caplog):
    from gan_dist import config
    from gan_dist.errors import UserError
    from gan_dist.quality.evaluation import effective_every

    digits = config.load(None, [])
    assert digits.eval.every == 500 and effective_every(digits, own_data=False, is_main=True) == 500
    folder = config.load(None, ["data.name=image_folder", "data.root=/x"])
    with caplog.at_level("WARNING", logger="gan_dist"):
        assert effective_every(folder, own_data=False, is_main=True) == 0
    assert "evaluation is off" in caplog.text and "image_folder" in caplog.text
    assert effective_every(digits, own_data=True, is_main=False) == 0  # gan_dist.fit(data=...)
    assert effective_every(config.load(None, ["data.name=image_folder", "data.root=/x", "eval.features=torchscript:f.pt"]),
                           own_data=False, is_main=True) == 500
    with pytest.raises(UserError, match="train.keep_best: the digits classifier"):
        effective_every(config.load(None, ["data.name=image_folder", "data.root=/x", "train.keep_best=fid"]),
                        own_data=False, is_main=True)


def test_a_reference_cache_one_rank_cannot_read_is_recomputed_by_all(tmp_path):
    """Rank 1 does not see RUN_DIR/eval/reference_*.pt (NFS lag, damage): every rank recomputes,
    none waits alone in a collective; a damaged file is replaced."""
    run = tmp_path / "run"
    args = TINY + EVAL + [f"run.dir={run}"]
    ok(train(args + ["train.steps=4"], world_size=2))
    results = ok(train_injected(args + ["train.steps=8"], world_size=2, timeout=180,
                                env_extra={"GAN_DIST_TEST_REFERENCE_UNSEEN": "1"}))
    assert "unreadable on rank 1" in results[1].err and "unreadable" not in results[0].err
    evals = [r for r in metrics_rows(run) if "fid" in r]
    assert [r["step"] for r in evals] == [4, 8] and evals[0]["ref_fid"] == evals[1]["ref_fid"]
    (cache,) = (run / "eval").glob("reference_*.pt")
    cache.write_bytes(b"damaged")
    ok(train(args + ["train.steps=12"], world_size=2))
    assert torch.load(cache, weights_only=True)["features"].shape[0] > 0


def test_the_value_to_beat_never_goes_backwards_and_rank_0_judges(tmp_path):
    """best.pt (fid 5 at step 6) is newer than the step-4 checkpoint (best 10) that a rollback
    and a resume load: a later 7 must not replace it. Rank 1's own numbers would judge
    otherwise (4 beats 5): it follows rank 0's verdict."""
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    args = TINY + EVAL + ["eval.every=2", "train.keep_best=fid", "train.checkpoint_every=4"]
    # rollback: NaN before step 7, detected at step 8's log -> back to step 4; evals 2 4 6 | 6 8
    ok(train_injected(args + ROLLBACK + ["train.steps=8", f"run.dir={tmp_path}/run"], world_size=2,
                      env_extra={"GAN_DIST_TEST_NAN_AT": "7", "GAN_DIST_TEST_EVAL_VALUES": "10,10,5,7,6",
                                 "GAN_DIST_TEST_EVAL_VALUES_RANK1": "10,10,5,4,6"}))
    assert load_ckpt(best)["best"] == {"metric": "fid", "value": 5.0, "step": 6}
    assert load_ckpt(best)["step"] == 6
    # resume from a step checkpoint older than best.pt (the newer one lost)
    ok(train_injected(args + ["train.steps=6", f"run.dir={tmp_path}/b"], world_size=2,
                      env_extra={"GAN_DIST_TEST_EVAL_VALUES": "10,10,5"}))
    (tmp_path / "b" / "checkpoints" / "step_00000006.pt").unlink()
    ok(train_injected(args + ["train.steps=8", f"run.dir={tmp_path}/b"], world_size=2,
                      env_extra={"GAN_DIST_TEST_EVAL_VALUES": "7,6"}))
    assert load_ckpt(tmp_path / "b" / "checkpoints" / "best.pt")["best"] == {"metric": "fid", "value": 5.0, "step": 6}


def _features_file(path, image_size=8):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(image_size * image_size, 4))
    torch.jit.script(net).save(str(path))
    return path


def test_a_feature_network_only_rank_0_sees_serves_every_rank(tmp_path):
    """One way for every feature network: rank 0 reads the file, every rank gets its bytes. A
    path rank 1 cannot see (node-local) trains; a file that is not TorchScript stops both ranks
    with one line, none left waiting in a collective."""
    features = _features_file(tmp_path / "node0_features.pt")
    args = TINY + EVAL + ["train.steps=4", f"eval.features=torchscript:{features}"]
    ok(train_injected(args + [f"run.dir={tmp_path}/run"], world_size=2, timeout=180,
                      env_extra={"GAN_DIST_TEST_HIDE": f"1:{features.name}"}))
    assert "fid" in metrics_rows(tmp_path / "run")[-1]
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not torchscript")
    for r in train(TINY + EVAL + ["train.steps=4", f"eval.features=torchscript:{broken}", f"run.dir={tmp_path}/b"],
                   world_size=2, timeout=120):
        one_line_error(r, f"eval.features: {broken} is not TorchScript")


def test_a_generator_gone_non_finite_between_log_steps_diverges_instead_of_crashing_evaluation(tmp_path):
    # the generator's weights NaN before step 3, log every 10, evaluation at 4: the loss check runs first
    args = TINY + EVAL + ["train.log_every=10", "train.steps=8"]
    r = train_injected(args + [f"run.dir={tmp_path}/a"], env_extra={"GAN_DIST_TEST_NAN_GENERATOR_AT": "3"})[0]
    one_line_error(r, "loss is not finite at step 3")
    # only the EMA (the sample generator) goes NaN: the losses stay finite, the evaluation sees it
    for r in train_injected(args + [f"run.dir={tmp_path}/b"], world_size=2,
                            env_extra={"GAN_DIST_TEST_NAN_EMA_AT": "3"}):
        one_line_error(r, "the sample generator's images are not finite", "at step 4")
    assert not list((tmp_path / "b" / "checkpoints").glob("step_*.pt"))


def test_rank_0_failing_around_a_save_stops_every_rank_or_only_warns(tmp_path):
    # an old checkpoint that cannot be removed: a warning, the run goes on
    results = ok(train_injected(TINY + ["train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=1",
                                        f"run.dir={tmp_path}/a"], world_size=2, timeout=120,
                                env_extra={"GAN_DIST_TEST_SAVE_FAULT": "unlink"}))
    assert "could not remove" in results[0].err and latest_ckpt(tmp_path / "a")["step"] == 6
    # a save failing with something that is not an OSError: every rank stops at once, naming it
    results = train_injected(TINY + ["train.steps=6", f"run.dir={tmp_path}/b"], world_size=2, timeout=120,
                             env_extra={"GAN_DIST_TEST_SAVE_FAULT": "pickle"})
    assert results[0].rc != 0 and "cannot pickle 'generator' object" in results[0].err
    one_line_error(results[1], "checkpoint at step 4: TypeError: cannot pickle 'generator' object")
