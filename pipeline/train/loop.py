"""Training one fold: `fit(cfg, fold)` reads the folds file and writes the fold's outputs.

outputs/<exp>/fold_<k>/
    metrics.csv            one row per epoch (rewritten atomically each epoch)
    confusion.csv          validation confusion matrix of the best epoch
    oof.csv                validation rows with their class probabilities (best weights)
    train_prior.json       the class prior the model learned (sampling, class weights, smoothing)
    weights.safetensors    best weights by the monitored metric (+ weights.json sidecar)
    state/                 resumable checkpoint while training; removed once the fold is done

The order matters for Make: `weights.safetensors` is the fold's target and is
written last, so a killed run never looks finished. A killed fold resumes from
its last completed epoch; every epoch reseeds its own RNGs from (seed, epoch), so
a resumed fold ends with the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, WeightedRandomSampler

from pipeline.allocator import keep_freed_memory
from pipeline.config import Config
from pipeline.stamps import package_versions
from pipeline.device import amp_name, loader_workers, resolve_amp, resolve_channels_last, resolve_device
from pipeline.data.manifest import train_fingerprint
from pipeline.data.batches import image_loader
from pipeline.data.bit_depth import scaling_for
from pipeline.data.cache import BatchNormalize, DecodedImages, DeviceFlip, decoded_for, make_dataset
from pipeline.fileio import atomic_path, file_sha256, write_csv_atomic
from pipeline.train.losses import build_loss
from pipeline.metrics import classification_metrics, confusion, log_loss, per_class_f1
from pipeline.train.models import create_model, load_weights, safe_torch_load, save_weights, unwrap
from pipeline.progress import progress
from pipeline.train.optim import build_optimizer, build_scheduler, step_epoch_scheduler
from pipeline.train.selection import FoldData, fold_data, is_better, oof_frame
from pipeline.train.tracking import Tracker
from pipeline.data.sampling import balanced_sample_weights, epoch_rows, epoch_seed
from pipeline.train.prior import write_train_prior

__all__ = ["fit", "training_loader", "train_one_epoch", "predict_probs", "StepTools", "set_backbone_frozen", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---- data ----------------------------------------------------------------------------------

def _loader(dataset, cfg: Config, device, shuffle=False, sampler=None, generator=None, drop_last=False,
            persistent=False):
    # The training loader is rebuilt every epoch (fresh seeds), so only the validation loader,
    # iterated every epoch, keeps its workers alive between passes.
    return image_loader(dataset, cfg.train.batch_size, device, loader_workers(cfg.train.num_workers, device),
                        shuffle=shuffle, sampler=sampler, generator=generator, drop_last=drop_last,
                        persistent=persistent)


def training_loader(cfg: Config, data: FoldData, device, epoch: int,
                    decoded: DecodedImages | None = None) -> DataLoader:
    """The loader `fit` trains an epoch on: the fold's training rows only (never a validation row),
    oversampled or class-balanced as configured, reseeded every epoch."""
    seed = epoch_seed(cfg.seed, epoch)
    gen = torch.Generator().manual_seed(seed)
    labels = data.targets[data.train_idx]
    rows = data.train_idx[epoch_rows(labels, cfg.sampling.method, cfg.sampling.target_ratio, seed)]
    ds = make_dataset(cfg.augment, data.table["image"].to_numpy(), rows, data.targets[rows], train=True,
                      decoded=decoded, scaling=scaling_for(cfg))
    ds.transform.set_random_seed(seed)
    drop_last = _mix_enabled(cfg) and len(rows) > cfg.train.batch_size  # Mixup needs even batches
    if cfg.sampling.method == "balanced":
        weights = torch.as_tensor(balanced_sample_weights(labels), dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(rows), replacement=True, generator=gen)
        return _loader(ds, cfg, device, sampler=sampler, generator=gen, drop_last=drop_last)
    return _loader(ds, cfg, device, shuffle=True, generator=gen, drop_last=drop_last)


# ---- model, optimizer, schedule ---------------------------------------------------------------

def set_backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) everything but the classifier head."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad = frozen is False or id(p) in head


def _freeze_norm_stats(model: torch.nn.Module) -> None:
    """Keep a frozen backbone's BatchNorm statistics fixed too, so the backbone stays bit-identical."""
    head = {id(m) for m in model.get_classifier().modules()}
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in head:
            m.eval()


def _backbone_frozen(cfg: Config, epoch: int) -> bool:
    m = cfg.model
    return m.freeze_backbone and (m.unfreeze_epoch is None or epoch < m.unfreeze_epoch)


def _mix_enabled(cfg: Config, epoch: int = 0) -> bool:
    t = cfg.train
    on = (t.mixup_alpha > 0 or t.cutmix_alpha > 0) and t.mix_prob > 0
    return on and (t.mix_off_epoch is None or epoch < t.mix_off_epoch)


# ---- the loop ---------------------------------------------------------------------------------

@dataclass
class StepTools:
    """What one optimisation step may use besides model, optimizer and loss."""
    accumulate: int = 1
    grad_clip: float | None = None
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixup: Mixup | None = None
    ema: ModelEmaV3 | None = None
    scheduler: object = None          # stepped per update (OneCycle)
    channels_last: bool = False
    normalize: torch.nn.Module | None = None   # uint8 batches (decode cache) → normalised floats on the device
    flip: DeviceFlip | None = None              # augment.device_hflip / device_vflip
    flip_generator: torch.Generator | None = None   # reseeded every epoch (reproducible, resumable)
    frozen_backbone: bool = False
    progress_mode: str = "off"       # report.progress: auto | bar | lines | off
    progress_desc: str = ""


def _group_weights(batch_sizes: list[int], accumulate: int) -> list[float]:
    """Per-micro-batch loss weight so that N accumulated batches give one big batch's mean-loss update.

    Each micro-batch's mean loss is weighted by its share of the samples in its update group,
    which also handles the last, partial group exactly.
    """
    weights = []
    for start in range(0, len(batch_sizes), accumulate):
        group = batch_sizes[start:start + accumulate]
        weights += [n / sum(group) for n in group]
    return weights


def _batch_sizes(loader: DataLoader) -> list[int]:
    n = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
    bs = loader.batch_size
    sizes = [bs] * (n // bs)
    if n % bs and not loader.drop_last:
        sizes.append(n % bs)
    return sizes


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch: int, tools: StepTools | None = None) -> float:
    """One pass over `loader` in training mode; returns the mean loss. Stops on a non-finite loss."""
    tools = tools or StepTools()
    model.train()
    if tools.frozen_backbone:
        _freeze_norm_stats(model)
    sizes = _batch_sizes(loader)
    weights = _group_weights(sizes, tools.accumulate)
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    # Each batch's loss is read (one device sync) only after the NEXT batch's work is queued, so a GPU
    # never waits for the host between steps. A non-finite loss still stops the epoch, one step later,
    # before anything is saved: the last good checkpoint is what a rerun resumes from.
    previous = None
    # The bar counts what the loop reports (a batch once its loss is read) and ends when the `with` does.
    with progress(loader, total=sum(sizes), desc=tools.progress_desc, mode=tools.progress_mode,
                  counted=True) as bar:
        for step, (images, targets) in enumerate(bar):
            images, targets = _to_device(images, targets, device, tools.channels_last, tools.normalize)
            if tools.flip is not None:
                images = tools.flip(images, tools.flip_generator)
            loss_targets = targets
            if tools.mixup is not None:
                images, loss_targets = tools.mixup(images, targets)
            with torch.autocast(device.type, dtype=tools.amp_dtype, enabled=tools.amp_dtype is not None):
                loss = loss_fn(model(images), loss_targets)
            _backward(loss if weights[step] == 1.0 else loss * weights[step], tools)
            if (step + 1) % tools.accumulate == 0 or step + 1 == len(weights):
                _update(model, optimizer, tools)
            if previous is not None:
                total += _read_loss(*previous, epoch, bar)
            previous = (step, loss.detach(), len(targets))
            count += len(targets)
        if previous is not None:
            total += _read_loss(*previous, epoch, bar)
    return total / max(count, 1)


def _read_loss(step: int, loss: torch.Tensor, n: int, epoch: int, bar) -> float:
    """The batch's summed loss (its mean x `n`) as a float; NonFiniteLossError when it is NaN or infinite."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {step}; "
                                 "lower train.lr or check the inputs. The last good checkpoint is kept.")
    bar.update(n, loss=value)
    return value * n


def _to_device(images, targets, device, channels_last: bool, normalize=None):
    images = images.to(device, non_blocking=True)   # uint8 from the cache: 4x fewer bytes to move
    if normalize is not None:
        images = normalize(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def _backward(loss: torch.Tensor, tools: StepTools) -> None:
    (tools.scaler.scale(loss) if tools.scaler is not None else loss).backward()


def _update(model, optimizer, tools: StepTools) -> None:
    if tools.scaler is not None:
        tools.scaler.unscale_(optimizer)
    if tools.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tools.grad_clip)
    if tools.scaler is not None:
        tools.scaler.step(optimizer)
        tools.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if tools.ema is not None:
        tools.ema.update(model)
    if tools.scheduler is not None:
        tools.scheduler.step()


@torch.inference_mode()
def predict_probs(model, loader, device, channels_last: bool = False,
                  normalize=None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and logits for every image of `loader`, in order (model in eval mode)."""
    model.eval()
    logits = [model(_to_device(images, t, device, channels_last, normalize)[0]).float().cpu()
              for images, t in loader]
    logits = torch.cat(logits)
    return logits.softmax(dim=1).numpy(), logits.numpy()


def _validate(model, loader, targets, loss_fn, device, tools: StepTools) -> tuple[dict, np.ndarray]:
    probs, logits = predict_probs(model, loader, device, tools.channels_last, tools.normalize)
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits).to(device), torch.from_numpy(targets).to(device)))
    return {"loss": loss, **classification_metrics(targets, probs), "log_loss": log_loss(targets, probs)}, probs


# ---- checkpoints --------------------------------------------------------------------------

def _save_state(path: Path, **state) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, fingerprint: str) -> dict | None:
    """A checkpoint to resume from, or None when absent or made by a different config."""
    if not path.is_file():
        return None
    state = safe_torch_load(path)
    if state.get("fingerprint") != fingerprint:
        print(f"[train] {path} was made with a different config or other training images; "
              "starting this fold afresh")
        return None
    return state


# ---- one fold -----------------------------------------------------------------------------

@dataclass
class _Run:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    tools: StepTools
    loss_fn: torch.nn.Module


def _build_run(cfg: Config, data: FoldData, device: torch.device) -> _Run:
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, len(data.classes), data.classes).to(device)
    channels_last = resolve_channels_last(cfg.train.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Every parameter joins the optimizer (timm's grouping drops frozen ones), so a backbone
    # unfrozen later trains too; frozen parameters get no gradient, so nothing updates them.
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, _updates_estimate(cfg, data))
    counts = np.bincount(data.targets[data.train_idx], minlength=len(data.classes))
    loss_fn = build_loss(cfg.loss, counts).to(device)
    amp_dtype = resolve_amp(cfg.train.amp, device)
    tools = StepTools(
        accumulate=cfg.train.accumulate, grad_clip=cfg.train.grad_clip, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,  # bf16 needs none
        ema=ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema else None,
        scheduler=scheduler if cfg.train.scheduler == "onecycle" else None,
        channels_last=channels_last,
        normalize=BatchNormalize(cfg.augment.mean, cfg.augment.std, channels_last).to(device),
        flip=DeviceFlip(cfg.augment.device_hflip, cfg.augment.device_vflip)
        if cfg.augment.device_hflip or cfg.augment.device_vflip else None)
    if cfg.train.compile:
        model = torch.compile(model)
    return _Run(model, optimizer, scheduler, tools, loss_fn)


def _updates_estimate(cfg: Config, data: FoldData) -> int:
    """Optimizer updates per epoch (OneCycle needs the total in advance)."""
    n = len(epoch_rows(data.targets[data.train_idx], cfg.sampling.method, cfg.sampling.target_ratio, cfg.seed))
    batches = n // cfg.train.batch_size if _mix_enabled(cfg) else math.ceil(n / cfg.train.batch_size)
    return math.ceil(max(batches, 1) / cfg.train.accumulate)


def _mixup_for(cfg: Config, epoch: int, n_classes: int) -> Mixup | None:
    if not _mix_enabled(cfg, epoch):
        return None
    t = cfg.train
    # Mixup mixes plain one-hot targets: loss.label_smoothing is applied once, by the loss
    # (timm's Mixup would smooth them too, and the loss would then smooth them a second time).
    return Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, prob=t.mix_prob,
                 label_smoothing=0.0, num_classes=n_classes)


def _state_dict(run: _Run) -> dict:
    state = {"model": unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict()}
    if run.tools.ema is not None:
        state["ema"] = run.tools.ema.state_dict()
    if run.tools.scaler is not None:
        state["scaler"] = run.tools.scaler.state_dict()
    return state


def _restore(run: _Run, state: dict) -> None:
    unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.tools.ema is not None:
        run.tools.ema.load_state_dict(state["ema"])
    if run.tools.scaler is not None:
        run.tools.scaler.load_state_dict(state["scaler"])


def _metrics_row(epoch, train_loss, metrics, lr, seconds, classes, val_targets, probs) -> dict:
    f1s = per_class_f1(val_targets, probs)
    return {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in metrics.items()},
            **{f"val_f1_{c}": float(f) for c, f in zip(classes, f1s)}, "lr": lr, "seconds": round(seconds, 2)}


def fit(cfg: Config, fold: int, log=print, on_epoch=None) -> Path:
    """Train one fold end to end (resuming if a checkpoint exists); returns the weights path.

    `on_epoch(epoch, metrics)` is called after each epoch's checkpoint is saved, with the
    validation metrics (`loss`, `accuracy`, `f1_macro`, ...); it may raise to stop (e.g. Optuna pruning).
    """
    device = resolve_device(cfg.train.device)
    kept = keep_freed_memory()      # no page faults re-allocating each step's activations (pipeline/allocator.py)
    data = fold_data(cfg, fold)
    out, fingerprint, monitor = cfg.fold_dir(fold), train_fingerprint(cfg), cfg.train.monitor
    state_dir = out / "state"
    run = _build_run(cfg, data, device)
    paths = data.table["image"].to_numpy()
    decoded = decoded_for(cfg, paths, log=log)   # every image of the table, shared by all folds
    val_loader = _loader(make_dataset(cfg.augment, paths, data.val_idx, data.val_targets, decoded=decoded,
                                      scaling=scaling_for(cfg)), cfg, device, persistent=True)
    history, best, best_epoch, start = [], None, -1, 0
    state = _load_state(state_dir / "last.pt", fingerprint)
    if state is not None:
        _restore(run, state)
        history, best, best_epoch, start = state["history"], state["best"], state["best_epoch"], state["epoch"] + 1
        log(f"[fold {fold}] resuming after epoch {state['epoch'] + 1}/{cfg.train.epochs}")
    tracker = Tracker(cfg, fold)
    log(f"[fold {fold}] {len(data.train_idx)} train / {len(data.val_idx)} val images, "
        f"{len(data.classes)} classes, {cfg.model.name} on {device}{_precision_note(run.tools)}")
    for epoch in range(start, cfg.train.epochs):
        if cfg.train.patience is not None and epoch - best_epoch > cfg.train.patience:
            log(f"[fold {fold}] early stop: no {monitor} improvement for {cfg.train.patience} epochs")
            break
        # Dropout (torch) and timm's Mixup/CutMix (numpy's global RNG): the same draws after a resume.
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        np.random.seed(epoch_seed(cfg.seed, epoch) % 2**32)
        tick = time.time()
        frozen = _backbone_frozen(cfg, epoch)
        set_backbone_frozen(run.model, frozen)
        run.tools.frozen_backbone, run.tools.mixup = frozen, _mixup_for(cfg, epoch, len(data.classes))
        run.tools.flip_generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        run.tools.progress_mode = cfg.report.progress
        run.tools.progress_desc = f"[fold {fold}] epoch {epoch + 1}/{cfg.train.epochs}"
        train_loss = train_one_epoch(run.model, training_loader(cfg, data, device, epoch, decoded), run.optimizer,
                                     run.loss_fn, device, epoch, run.tools)
        evaluated = evaluated_model(run)
        metrics, probs = _validate(evaluated, val_loader, data.val_targets, run.loss_fn, device, run.tools)
        lr = run.optimizer.param_groups[0]["lr"]
        step_epoch_scheduler(cfg, run.scheduler, metrics)
        history.append(_metrics_row(epoch, train_loss, metrics, lr, time.time() - tick, data.classes,
                                    data.val_targets, probs))
        improved = is_better(metrics[monitor], best, monitor)
        if improved:
            best, best_epoch = metrics[monitor], epoch
            save_weights(evaluated, state_dir / "best.safetensors", {"epoch": epoch})
        write_csv_atomic(out / "metrics.csv", pd.DataFrame(history))
        tracker.log_epoch(epoch, history[-1])
        _save_state(state_dir / "last.pt", **_state_dict(run), epoch=epoch, best=best, best_epoch=best_epoch,
                    history=history, fingerprint=fingerprint)
        log(_epoch_line(fold, epoch, cfg.train.epochs, train_loss, metrics, lr, history[-1]["seconds"], improved,
                        cfg.train.monitor))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    tracker.close()
    return _finish_fold(cfg, fold, data, evaluated_model(run), val_loader, device, best, fingerprint, run.tools, kept)


def _precision_note(tools: StepTools) -> str:
    """How the steps compute, as the fold's first line says it (`auto` settings resolved)."""
    parts = ([f"{amp_name(tools.amp_dtype)} autocast"] if tools.amp_dtype is not None else []) + \
        (["channels_last"] if tools.channels_last else [])
    return f" ({', '.join(parts)})" if parts else ""


def evaluated_model(run: _Run) -> torch.nn.Module:
    return run.tools.ema.module if run.tools.ema is not None else run.model


def _epoch_line(fold, epoch, epochs, train_loss, m, lr, seconds, improved, monitor=None) -> str:
    # The monitored metric (the one `*` marks the best of) is shown too when it is not already on the line.
    shown = f" {monitor} {m[monitor]:.4f}" if monitor not in (None, "loss", "accuracy", "f1_macro") and monitor in m else ""
    return (f"[fold {fold}] epoch {epoch + 1}/{epochs} loss {train_loss:.4f} val_loss {m['loss']:.4f} "
            f"acc {m['accuracy']:.4f} f1 {m['f1_macro']:.4f}{shown} lr {lr:.2e} {seconds:.1f}s{' *' if improved else ''}")


def _finish_fold(cfg, fold, data, model, val_loader, device, best, fingerprint, tools: StepTools,
                 freed_memory_kept: bool) -> Path:
    """Out-of-fold probabilities from the best weights, then the weights themselves (last)."""
    out = cfg.fold_dir(fold)
    model = unwrap(model)  # torch.compile wrapper: predict OOF with the plain module the best weights fit
    common = {"model": cfg.model.name, "heads": cfg.model.heads, "classes": data.classes, "fold": fold,
              "fingerprint": fingerprint, "image_size": cfg.augment.image_size, "folds_file": str(cfg.folds_file),
              "folds_sha256": file_sha256(cfg.folds_file),
              # what `auto` chose on the machine that trained it
              "device": device.type, "amp": amp_name(tools.amp_dtype), "channels_last": tools.channels_last,
              "freed_memory_kept": freed_memory_kept}     # a condition of its epoch times (pipeline/allocator.py)
    # The final epoch's weights (EMA if on) can join the vote beside the best (ensemble.checkpoints).
    save_weights(model, out / "last.safetensors", {**common, "checkpoint": "last"})
    model.load_state_dict(load_weights(out / "state" / "best.safetensors"))
    probs, _ = predict_probs(model, val_loader, device, tools.channels_last, tools.normalize)
    write_csv_atomic(out / "oof.csv", oof_frame(data, fold, probs))
    cm = pd.DataFrame(confusion(data.val_targets, probs), index=data.classes, columns=data.classes)
    write_csv_atomic(out / "confusion.csv", cm.rename_axis("true"), index=True)
    write_train_prior(cfg, out, data.targets[data.train_idx], data.classes)  # the prior the ensemble divides out
    meta = {**common, "checkpoint": "best", "monitor": cfg.train.monitor, "best": best,
            "versions": package_versions(),
            **classification_metrics(data.val_targets, probs)}
    weights = out / "weights.safetensors"
    save_weights(model, weights, meta)
    shutil.rmtree(out / "state", ignore_errors=True)
    return weights
