"""The training toolkit: each test proves an option's effect, not merely that it runs."""

import os
import platform

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

import pipeline.train.loop as train_mod
from pipeline.config import load_config
from pipeline.train.models import create_model
from pipeline.data.fold_file import make_folds
from pipeline.train.selection import fold_data
from pipeline.train.loop import StepTools, fit, train_one_epoch
from pipeline.train.optim import build_optimizer, build_scheduler, step_epoch_scheduler

QUIET = dict(log=lambda *_: None)


def _linear_setup(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(40, 3, 4, 4), torch.randint(0, 3, (40,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    return x, y, model


def _one_epoch(model, x, y, batch_size, accumulate):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    train_one_epoch(model, loader, opt, torch.nn.CrossEntropyLoss(), torch.device("cpu"), 0,
                    StepTools(accumulate=accumulate))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulating_2x16_equals_one_batch_of_32_including_the_partial_last_group():
    x, y, model = _linear_setup()
    big = _one_epoch(model, x, y, batch_size=32, accumulate=1)            # updates: 32, then 8
    x, y, model = _linear_setup()
    accumulated = _one_epoch(model, x, y, batch_size=16, accumulate=2)    # 16+16, then 8 alone
    assert torch.allclose(big, accumulated, atol=1e-6)
    x, y, model = _linear_setup()
    assert not torch.allclose(big, _one_epoch(model, x, y, batch_size=16, accumulate=1), atol=1e-4)


def _lrs_under(cfg, metric_values):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    sched = build_scheduler(cfg, opt, updates_per_epoch=1)
    lrs = []
    for value in metric_values:
        step_epoch_scheduler(cfg, sched, {cfg.train.monitor: value})
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_reduce_on_plateau_follows_the_monitored_metric_direction(tiny_cfg_dict):
    base = dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], scheduler="plateau", lr=1.0, gamma=0.5,
                                           plateau_patience=1, epochs=10))
    f1 = load_config(None, base)
    assert _lrs_under(f1, [0.1, 0.2, 0.3, 0.4]) == [1.0] * 4          # f1 improving: keep the rate
    assert _lrs_under(f1, [0.5, 0.5, 0.5, 0.5])[-1] == 0.5             # plateau: halve it
    loss = load_config(None, dict(base, train=dict(base["train"], monitor="loss")))
    assert _lrs_under(loss, [1.0, 0.9, 0.8, 0.7]) == [1.0] * 4         # loss falling is improving
    assert _lrs_under(loss, [0.5, 0.6, 0.7, 0.8])[-1] < 1.0            # loss rising: reduce


def test_step_cosine_and_warmup_schedules(tiny_cfg_dict):
    def cfg(**train):
        return load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], lr=1.0, epochs=6, **train)))
    assert _lrs_under(cfg(scheduler="step", step_size=2, gamma=0.1), [0] * 4) == pytest.approx([1, 0.1, 0.1, 0.01])
    cos = _lrs_under(cfg(scheduler="cosine"), [0] * 6)
    assert cos[-1] == pytest.approx(0.0, abs=1e-9) and all(a > b for a, b in zip(cos, cos[1:]))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    build_scheduler(cfg(scheduler="cosine", warmup_epochs=2), opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # warmup starts at a tenth


def test_backbone_gets_its_own_lr_and_norms_and_biases_no_weight_decay(tiny_cfg_dict):
    cfg = load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], lr=1e-2, backbone_lr=1e-4,
                                                            weight_decay=0.05)))
    model = create_model(cfg.model, 4)
    opt = build_optimizer(cfg, model)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in opt.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1
        assert group["lr"] == (1e-2 if is_head.pop() else 1e-4)
        if any(p.ndim <= 1 for p in group["params"]):
            assert group["weight_decay"] == 0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name, fused", [("adamw", True), ("adam", True), ("sgd", True), ("lion", None)])
def test_optimizers_with_fused_kernels_use_them_and_train_the_same(tiny_cfg_dict, name, fused):
    """One fused pass per tensor instead of a dozen ops (a tenth of the demo's CPU step); the same update."""
    import copy

    cfg = load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], optimizer=name)))
    x, y, model = _linear_setup()
    twin = copy.deepcopy(model)
    opt, plain = build_optimizer(cfg, model), build_optimizer(cfg, twin)
    assert all(g.get("fused") == fused for g in opt.param_groups)
    for g in plain.param_groups:
        g["fused"] = None                       # the per-tensor loop
    for m, o in ((model, opt), (twin, plain)):
        for _ in range(3):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    assert torch.allclose(torch.cat([p.flatten() for p in model.parameters()]),
                          torch.cat([p.flatten() for p in twin.parameters()]), atol=1e-6)


@pytest.fixture
def folds_ready(tiny_cfg):
    make_folds(tiny_cfg, **QUIET)
    return tiny_cfg


def _with(cfg_dict, tmp_path, **sections):
    d = dict(cfg_dict, output_dir=str(tmp_path / "out"))
    for name, values in sections.items():
        d[name] = dict(d.get(name, {}), **values)
    return load_config(None, d)


def test_frozen_backbone_is_bit_identical_after_training(tiny_cfg_dict, folds_ready, tmp_path):
    cfg = _with(tiny_cfg_dict, tmp_path, model={"freeze_backbone": True}, train={"epochs": 2, "lr": 0.05})
    torch.manual_seed(cfg.seed)
    initial = create_model(cfg.model, 10).state_dict()
    trained = load_file(fit(cfg, 0, **QUIET))
    head = {k for k in trained if k.startswith("fc.")}
    assert head and all(not torch.equal(initial[k], trained[k]) for k in head)
    assert all(torch.equal(initial[k], trained[k]) for k in trained if k not in head)


def test_unfreezing_later_trains_the_backbone(tiny_cfg_dict, folds_ready, tmp_path):
    cfg = _with(tiny_cfg_dict, tmp_path, model={"freeze_backbone": True, "unfreeze_epoch": 1},
                train={"epochs": 2, "lr": 0.05})
    torch.manual_seed(cfg.seed)
    initial = create_model(cfg.model, 10).state_dict()
    fit(cfg, 0, **QUIET)
    # The final epoch's weights (the best ones may be epoch 0's, still frozen).
    trained = load_file(cfg.fold_dir(0) / "last.safetensors")
    assert any(not torch.equal(initial[k], trained[k]) for k in trained if not k.startswith("fc."))


def test_ema_weights_are_the_ones_evaluated_and_saved(tiny_cfg_dict, folds_ready, tmp_path, monkeypatch):
    cfg = _with(tiny_cfg_dict, tmp_path, train={"ema": True, "ema_decay": 0.5, "epochs": 1})
    runs, validated = [], []
    real_build, real_validate = train_mod._build_run, train_mod._validate
    monkeypatch.setattr(train_mod, "_build_run", lambda *a: runs.append(real_build(*a)) or runs[-1])
    monkeypatch.setattr(train_mod, "_validate", lambda model, *a: validated.append(model) or real_validate(model, *a))
    saved = load_file(fit(cfg, 0, **QUIET))
    run = runs[0]
    assert validated[0] is run.tools.ema.module
    ema, raw = run.tools.ema.module.state_dict(), run.model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    assert all(torch.equal(saved[k], ema[k]) for k in saved)


def _effective_targets(loss_fn, logits, targets):
    """The target distribution a cross-entropy loss pulls towards: softmax - B * dL/dlogits."""
    logits = logits.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(logits, targets), logits)
    return (logits.softmax(1) - len(logits) * grad).detach()


def test_mixup_targets_are_mixed_one_hots_smoothed_exactly_once(tiny_cfg_dict, folds_ready, tmp_path, monkeypatch):
    smoothing = 0.1
    cfg = _with(tiny_cfg_dict, tmp_path, train={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_off_epoch": 1,
                                                 "epochs": 2, "batch_size": 16},
                loss={"name": "ce", "label_smoothing": smoothing})
    seen = {}
    real = train_mod.train_one_epoch

    def spy(model, loader, optimizer, loss_fn, device, epoch, tools):
        def recording(logits, targets):
            seen.setdefault(epoch, (targets.detach().clone(), _effective_targets(loss_fn, logits, targets)))
            return loss_fn(logits, targets)
        return real(model, loader, optimizer, recording, device, epoch, tools)

    monkeypatch.setattr(train_mod, "train_one_epoch", spy)
    fit(cfg, 0, **QUIET)
    mixed, effective = seen[0]
    n_classes = mixed.shape[1]
    # What the trainer hands the loss: a mix of two one-hot rows (weights lam and 1 - lam), unsmoothed.
    assert mixed.ndim == 2 and torch.allclose(mixed.sum(1), torch.ones(len(mixed)))
    assert ((mixed > 0.01) & (mixed < 0.99)).any()
    assert ((mixed > 0).sum(1) <= 2).all() and (mixed.min(1).values == 0).all()
    # What the loss pulls towards: that mix smoothed once, (1 - s) * mix + s / C.
    assert torch.allclose(effective, (1 - smoothing) * mixed + smoothing / n_classes, atol=1e-5)
    ids, effective_ids = seen[1]
    assert ids.ndim == 1  # switched off from epoch 1: plain class ids, smoothed by the loss alone
    expected = torch.nn.functional.one_hot(ids, n_classes) * (1 - smoothing) + smoothing / n_classes
    assert torch.allclose(effective_ids, expected, atol=1e-5)


def test_early_stopping_stops_after_patience_without_improvement(tiny_cfg_dict, folds_ready, tmp_path, monkeypatch):
    cfg = _with(tiny_cfg_dict, tmp_path, train={"epochs": 6, "patience": 2})
    real = train_mod._validate

    def flat(*args):
        metrics, probs = real(*args)
        return dict(metrics, f1_macro=0.5), probs

    monkeypatch.setattr(train_mod, "_validate", flat)
    fit(cfg, 0, **QUIET)
    assert len(pd.read_csv(cfg.fold_dir(0) / "metrics.csv")) == 3  # best at 0, then 2 without improvement


def test_best_checkpoint_is_the_weights_of_the_best_epoch(tiny_cfg_dict, folds_ready, tmp_path, monkeypatch):
    """monitor: loss (minimised); epoch 1 of 3 has the lowest loss, so its weights are saved.

    With a constant learning rate, epoch 1's weights are exactly the final weights of the same run
    stopped after 2 epochs (every epoch reseeds from (seed, epoch)).
    """
    real = train_mod._validate
    losses = {}

    def validate(*args):
        metrics, probs = real(*args)
        value = [0.9, 0.5, 0.7][len(losses.setdefault(id(args[1]), []))]
        losses[id(args[1])].append(value)
        return dict(metrics, loss=value), probs

    monkeypatch.setattr(train_mod, "_validate", validate)
    three = _with(tiny_cfg_dict, tmp_path / "3", train={"epochs": 3, "monitor": "loss", "scheduler": "none"})
    two = _with(tiny_cfg_dict, tmp_path / "2", train={"epochs": 2, "monitor": "loss", "scheduler": "none"})
    best = load_file(fit(three, 0, **QUIET))
    after_epoch_1 = load_file(fit(two, 0, **QUIET).parent / "last.safetensors")
    final = load_file(three.fold_dir(0) / "last.safetensors")
    assert all(torch.equal(best[k], after_epoch_1[k]) for k in best)
    assert any(not torch.equal(best[k], final[k]) for k in best)      # not simply the last epoch
    assert pd.read_json(three.fold_dir(0) / "weights.json", typ="series")["best"] == 0.5


def test_metrics_csv_has_every_metric_and_per_class_f1(tiny_cfg, folds_ready):
    fit(tiny_cfg, 0, **QUIET)
    metrics = pd.read_csv(tiny_cfg.fold_dir(0) / "metrics.csv")
    for col in ("val_accuracy", "val_f1_macro", "val_f1_weighted", "val_precision_macro", "val_recall_macro",
                "val_roc_auc", "val_loss", "train_loss", "lr", "val_f1_zero", "val_f1_nine"):
        assert col in metrics.columns, col
    cm = pd.read_csv(tiny_cfg.fold_dir(0) / "confusion.csv", index_col=0)
    assert cm.to_numpy().sum() == (pd.read_csv(tiny_cfg.folds_file)["fold"] == 0).sum()


def test_bf16_autocast_on_cpu_runs_the_model_in_bf16(tiny_cfg_dict, folds_ready, tmp_path, monkeypatch):
    cfg = _with(tiny_cfg_dict, tmp_path, train={"amp": "bf16"})
    dtypes = []
    real_build = train_mod._build_run

    def build(*a):
        run = real_build(*a)
        run.model.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
        return run

    monkeypatch.setattr(train_mod, "_build_run", build)
    fit(cfg, 0, **QUIET)
    assert dtypes and set(dtypes) == {torch.bfloat16}


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_and_channels_last_auto_follow_the_machine_and_are_recorded(tiny_cfg_dict, folds_ready, tmp_path,
                                                                       monkeypatch, native_bf16):
    import json

    monkeypatch.setattr(train_mod, "resolve_amp", lambda setting, device, real=train_mod.resolve_amp:
                        real(setting, device) if setting != "auto" else (torch.bfloat16 if native_bf16 else None))
    cfg = _with(tiny_cfg_dict, tmp_path, train={"amp": "auto", "channels_last": "auto"})
    dtypes, layouts = [], []
    real_build = train_mod._build_run

    def build(*a):
        run = real_build(*a)
        run.model.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
        run.model.conv1.register_forward_hook(
            lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
        return run

    monkeypatch.setattr(train_mod, "_build_run", build)
    meta = json.loads(fit(cfg, 0, **QUIET).with_suffix(".json").read_text())
    assert set(dtypes) == {torch.bfloat16 if native_bf16 else torch.float32}
    expected_layout = torch.backends.mkldnn.is_available()
    assert set(layouts) == {expected_layout}
    assert (meta["amp"], meta["channels_last"], meta["device"]) == ("bf16" if native_bf16 else "off",
                                                                    expected_layout, "cpu")


def test_a_nan_loss_later_in_the_epoch_names_its_step_and_the_mean_loss_weighs_every_image():
    x, y, model = _linear_setup()
    seen = []

    def loss_fn(logits, targets):
        loss = torch.nn.functional.cross_entropy(logits, targets)
        seen.append((loss.item(), len(targets)))
        return loss

    loader = DataLoader(TensorDataset(x, y), batch_size=16)          # batches of 16, 16 and 8
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mean = train_one_epoch(model, loader, opt, loss_fn, torch.device("cpu"), 0)
    assert mean == pytest.approx(sum(v * n for v, n in seen) / 40)

    def nan_at_step_1(logits, targets, calls=[]):
        calls.append(1)
        return loss_fn(logits, targets) * (float("nan") if len(calls) == 2 else 1.0)

    with pytest.raises(train_mod.NonFiniteLossError, match="at epoch 3, step 1;"):
        train_one_epoch(model, loader, opt, nan_at_step_1, torch.device("cpu"), 3)


def test_the_epochs_progress_counts_every_image_once_and_ends_at_its_total(capsys):
    """Each batch is reported once its loss is read, one step late: the last line still says 40/40, once."""
    x, y, model = _linear_setup()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)          # batches of 16, 16 and 8
    tools = StepTools(progress_desc="fold 0 epoch 1/1", progress_mode="lines")
    train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy,
                    torch.device("cpu"), 0, tools)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fold 0 epoch 1/1: ")]
    assert "100% 40/40 img" in lines[-1]
    assert sum("100%" in line for line in lines) == 1
    assert all("/40 img" in line and int(line.split("% ")[1].split("/")[0]) <= 40 for line in lines)


def test_pretrained_file_loads_backbone_and_adapts_the_head(tiny_cfg, tmp_path):
    source = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    cfg = load_config(None, {"model": {"name": "test_resnet", "pretrained_file": str(path)}})
    model = create_model(cfg.model, 3)
    assert model.get_classifier().out_features == 3
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())


def test_pretrained_offline_suggests_the_local_file_option(monkeypatch):
    def offline(*a, **k):
        if k.get("pretrained"):
            raise OSError("Name or service not known")
        raise AssertionError("unexpected")
    monkeypatch.setattr(timm, "create_model", offline)
    cfg = load_config(None, {"model": {"name": "resnet10t", "pretrained": True}})
    with pytest.raises(RuntimeError, match="model.pretrained_file"):
        create_model(cfg.model, 3)


def test_same_seed_same_epoch_metrics(tiny_cfg_dict, folds_ready, tmp_path):
    a = fit(_with(tiny_cfg_dict, tmp_path / "a"), 0, **QUIET)
    b = fit(_with(tiny_cfg_dict, tmp_path / "b"), 0, **QUIET)
    ma, mb = (pd.read_csv(p.parent / "metrics.csv").drop(columns="seconds") for p in (a, b))
    pd.testing.assert_frame_equal(ma, mb)
    assert np.array_equal(pd.read_csv(a.parent / "oof.csv").filter(like="prob_").to_numpy(),
                          pd.read_csv(b.parent / "oof.csv").filter(like="prob_").to_numpy())


def test_grad_clip_bounds_each_update():
    x, y, model = _linear_setup()
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(x * 100, y), batch_size=40)  # huge gradients
    train_one_epoch(model, loader, opt, torch.nn.CrossEntropyLoss(), torch.device("cpu"), 0,
                    StepTools(grad_clip=0.01))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 0.01 + 1e-6  # one SGD step of lr 1 moves by the clipped norm at most


def test_channels_last_changes_the_memory_layout_not_the_predictions(tiny_cfg):
    model = create_model(tiny_cfg.model, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    model = model.to(memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), reference, atol=1e-5)


def test_onecycle_warms_up_then_anneals_per_update(tiny_cfg_dict):
    cfg = load_config(None, dict(tiny_cfg_dict, train=dict(tiny_cfg_dict["train"], scheduler="onecycle", lr=1.0,
                                                            epochs=2)))
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(cfg, opt, updates_per_epoch=10)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    peak = int(np.argmax(lrs))
    assert 0 < peak < 19 and lrs[peak] == pytest.approx(1.0, rel=0.05) and lrs[-1] < 0.05


def test_runs_record_package_versions(tiny_cfg, folds_ready):
    """Every fold's sidecar names the installed version of each package that decides its numbers."""
    import platform
    from importlib import metadata

    meta = pd.read_json(fit(tiny_cfg, 0, **QUIET).with_suffix(".json"), typ="series")
    packages = ["torch", "torchvision", "timm", "albumentations", "numpy", "scikit-learn", "pandas", "pillow"]
    assert meta["versions"] == {"python": platform.python_version(), **{p: metadata.version(p) for p in packages}}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_training_keeps_freed_memory_for_its_next_step_and_says_so(tiny_cfg, folds_ready, monkeypatch):
    """fit fixes glibc's thresholds (pipeline/allocator.py; its effect: tests/test_allocator.py) and records it."""
    from pipeline.allocator import USER_SETTINGS

    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    meta = pd.read_json(fit(tiny_cfg, 0, **QUIET).with_suffix(".json"), typ="series")
    assert meta["freed_memory_kept"] is True


def test_decode_cache_changes_nothing_but_where_pixels_come_from(tiny_cfg_dict, folds_ready, tmp_path):
    """data.cache on or off: the same metrics, OOF and test probabilities; only 'on' writes cache files."""
    from pipeline.predict.fold import predict_fold

    runs = {}
    for cache in (True, False):
        cfg = _with(tiny_cfg_dict, tmp_path / str(cache), data={"cache": cache})
        weights = fit(cfg, 0, **QUIET)
        test_probs = pd.read_csv(predict_fold(cfg, 0, **QUIET))
        npy = sorted(p.name for p in (tmp_path / str(cache) / "out" / "cache").glob("*.npy"))
        runs[cache] = (pd.read_csv(weights.parent / "metrics.csv").drop(columns="seconds"),
                       pd.read_csv(weights.parent / "oof.csv"), test_probs, npy)
    for on, off in zip(runs[True][:3], runs[False][:3]):
        pd.testing.assert_frame_equal(on, off)
    assert len(runs[True][3]) == 2 and runs[False][3] == []   # train + test images; nothing when off


class _Recorder(torch.nn.Module):
    """A linear model that keeps every input batch it sees."""

    def __init__(self):
        super().__init__()
        self.seen, self.fc = [], torch.nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_device_flips_reach_the_model_as_configured(tiny_cfg_dict, folds_ready, tmp_path):
    from pipeline.data.cache import DeviceFlip

    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 3, (16,))
    for p_h, p_v, expected in ((1.0, 0.0, x.flip(3)), (0.0, 1.0, x.flip(2)), (0.0, 0.0, x)):
        model = _Recorder()
        train_one_epoch(model, DataLoader(TensorDataset(x, y), batch_size=16), torch.optim.SGD(model.parameters(), 0.1),
                        torch.nn.CrossEntropyLoss(), torch.device("cpu"), 0,
                        StepTools(flip=DeviceFlip(p_h, p_v) if p_h or p_v else None))
        assert torch.equal(model.seen[0], expected)
    # From the config: the keys build the flip, and a half-probability flip changes what is learnt.
    cfg = _with(tiny_cfg_dict, tmp_path / "f", augment={"device_hflip": 0.5})
    run = train_mod._build_run(cfg, fold_data(cfg, 0), torch.device("cpu"))
    assert run.tools.flip.p_h == 0.5 and run.tools.flip.p_v == 0.0
    flipped = load_file(fit(cfg, 0, **QUIET))
    plain = load_file(fit(_with(tiny_cfg_dict, tmp_path / "p"), 0, **QUIET))
    assert any(not torch.equal(flipped[k], plain[k]) for k in plain)
    with pytest.raises(ValueError, match="augment.device_hflip"):
        _with(tiny_cfg_dict, tmp_path, augment={"device_hflip": 1.5})


def test_num_workers_auto_is_zero_on_cpu_and_spare_cores_beside_a_gpu(tiny_cfg_dict, tmp_path, monkeypatch):
    from pipeline.device import loader_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")   # a device object needs no GPU
    assert loader_workers("auto", cpu) == 0 and loader_workers(3, cpu) == 3
    for cores, expected in ((16, 8), (4, 3), (1, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert loader_workers("auto", gpu) == expected
    assert _with(tiny_cfg_dict, tmp_path).train.num_workers == "auto"
    for bad in ("many", -1):
        with pytest.raises(ValueError, match="train.num_workers"):
            _with(tiny_cfg_dict, tmp_path, train={"num_workers": bad})


def test_compiled_fold_finishes_with_plain_weights_equal_to_an_uncompiled_run(tiny_cfg_dict, folds_ready, tmp_path,
                                                                               monkeypatch):
    """train.compile: true ends with weights that load into the plain model (no `_orig_mod.` keys).

    The real torch.compile wraps the model; only its backend is swapped for "eager" here, because
    inductor's C++ build of every graph costs about a minute on 2 cores. The wrapper, and so its
    `_orig_mod.` state-dict keys that broke saving, is the same whatever the backend.
    """
    from pipeline.train.models import load_trained_model
    from pipeline.predict.fold import predict_fold

    real_compile, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or real_compile(m, backend="eager"))
    cfg = _with(tiny_cfg_dict, tmp_path / "c", train={"compile": True, "epochs": 2})
    weights = fit(cfg, 0, **QUIET)
    assert compiled, "the trainer did not compile the model"
    saved = load_file(weights)
    assert not any(k.startswith("_orig_mod") for k in saved)
    plain = load_file(fit(_with(tiny_cfg_dict, tmp_path / "p", train={"epochs": 2}), 0, **QUIET))
    assert saved.keys() == plain.keys() and all(torch.allclose(saved[k].float(), plain[k].float(), atol=1e-5)
                                                for k in saved)
    model, _ = load_trained_model(weights)
    assert not hasattr(model, "_orig_mod")
    assert predict_fold(cfg, 0, **QUIET).is_file()


def test_trains_on_label_and_validates_on_true_label(tiny_cfg_dict, tmp_path, demo_dir, monkeypatch):
    """data.true_label_column: the loader hands out `label`, validation (metrics, confusion, OOF) uses `true_label`."""
    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    classes = sorted(train["label"].unique())
    moved = np.arange(len(train)) % 5 == 0                                # every fifth row: another true class
    train["true_label"] = np.where(moved, [classes[(classes.index(v) + 1) % len(classes)] for v in train["label"]],
                                   train["label"])
    csv = tmp_path / "train.csv"
    train.to_csv(csv, index=False)
    raw = dict(tiny_cfg_dict, output_dir=str(tmp_path / "out"), folds={**tiny_cfg_dict["folds"], "dir": str(tmp_path)})
    raw["data"] = dict(raw["data"], train_csv=str(csv), true_label_column="true_label", demo=False)
    cfg = load_config(None, raw)
    make_folds(cfg, **QUIET)
    seen = []
    real = train_mod.train_one_epoch
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda model, loader, *a: seen.append(loader) or real(model, loader, *a))
    fit(cfg, 0, **QUIET)
    data = fold_data(cfg, 0)
    index = {c: i for i, c in enumerate(data.classes)}
    drawn = seen[0].dataset.indices                                          # table rows of epoch 0
    assert not np.isin(drawn, data.val_idx).any() and moved[drawn].any()
    assert seen[0].dataset.targets.tolist() == [index[v] for v in train["label"].to_numpy()[drawn]]
    oof = pd.read_csv(cfg.fold_dir(0) / "oof.csv", dtype={"label": str})
    assert oof["label"].tolist() == train["true_label"].to_numpy()[oof["row"]].tolist()
    assert (oof["label"] != train["label"].to_numpy()[oof["row"]]).any()   # the moved rows are validated as moved
    confusion = pd.read_csv(cfg.fold_dir(0) / "confusion.csv", index_col=0, dtype={"true": str})
    truth = pd.Series(train["true_label"].to_numpy()[oof["row"]]).value_counts()
    assert confusion.sum(axis=1).to_dict() == {c: int(truth.get(c, 0)) for c in confusion.index}
