"""Training one fold: `fit(cfg, fold)` reads the folds file and writes the fold's outputs.

outputs/<exp>/fold_<k>/
    metrics.csv            one row per epoch (rewritten atomically each epoch)
    oof.csv                validation rows with their class probabilities (best weights)
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
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, WeightedRandomSampler

from .config import Config, stage_fingerprint
from .data import ImageDataset, build_transform, class_list, read_train_table
from .fileio import atomic_path, write_csv_atomic
from .folds import training_indices_for_fold
from .metrics import MAXIMISE, classification_metrics
from .models import create_model, safe_torch_load, save_weights
from .sampling import balanced_sample_weights, oversample_indices

__all__ = ["fit", "train_one_epoch", "predict_probs", "resolve_device", "load_fold_table", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def load_fold_table(cfg: Config) -> pd.DataFrame:
    """The train table with each row's fold, checked against the folds file it came from."""
    table = read_train_table(cfg)
    path = cfg.folds_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make folds` (or `python -m pipeline folds`) first")
    folds = pd.read_csv(path)
    if len(folds) != len(table) or (folds["label"].astype(str).to_numpy() != table["label"].astype(str).to_numpy()).any():
        raise ValueError(f"{path} does not match {cfg.data.train_csv} (rows or labels differ): "
                         "the train CSV changed since the folds were made; rerun `make folds`")
    table["fold"] = folds["fold"].to_numpy()
    return table


@dataclass
class _FoldData:
    classes: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    table: pd.DataFrame
    targets: np.ndarray


def _fold_data(cfg: Config, fold: int) -> _FoldData:
    table = load_fold_table(cfg)
    if not 0 <= fold < cfg.folds.n_splits:
        raise ValueError(f"fold {fold} does not exist: folds.n_splits is {cfg.folds.n_splits}")
    classes = class_list(table["label"])
    index = {c: i for i, c in enumerate(classes)}
    targets = table["label"].map(index).to_numpy()
    train_idx, val_idx = training_indices_for_fold(table["fold"].to_numpy(), fold)
    return _FoldData(classes, train_idx, val_idx, table, targets)


def _seed_worker(worker_id: int) -> None:
    # albumentations' Compose keeps its own RNG, copied as-is into every worker:
    # reseed it per worker or all workers would draw the same augmentations.
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def _loader(dataset, cfg: Config, device, shuffle=False, sampler=None, generator=None, batch_size=None):
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", generator=generator,
                      worker_init_fn=_seed_worker if workers else None)


def _train_loader(cfg: Config, data: _FoldData, device, epoch: int) -> DataLoader:
    """The training part of the fold only, oversampled as configured; reseeded every epoch."""
    seed = cfg.seed * 1000 + epoch
    transform = build_transform(cfg.augment, train=True)
    transform.set_random_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    labels = data.targets[data.train_idx]
    method = cfg.sampling.method
    rows = data.train_idx
    if method == "oversample":
        rows = data.train_idx[oversample_indices(labels, cfg.sampling.target_ratio, seed)]
    ds = ImageDataset(data.table["image"].to_numpy()[rows], data.targets[rows], transform)
    if method == "balanced":
        weights = torch.as_tensor(balanced_sample_weights(labels), dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(rows), replacement=True, generator=gen)
        return _loader(ds, cfg, device, sampler=sampler, generator=gen)
    return _loader(ds, cfg, device, shuffle=True, generator=gen)


def _scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    t = cfg.train
    epochs = t.epochs - t.warmup_epochs
    if t.scheduler == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    elif t.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    elif t.scheduler == "plateau":
        mode = "max" if MAXIMISE[t.monitor] else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=t.gamma,
                                                          patience=max(t.step_size - 1, 0))
    elif t.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, total_steps=t.epochs * steps_per_epoch)
    else:
        main = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if t.warmup_epochs == 0:
        return main
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=t.warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[t.warmup_epochs])


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch: int, scheduler=None, step_per_batch=False,
                    amp_dtype=None) -> float:
    """One pass over `loader` in training mode; returns the mean loss. Stops on a non-finite loss."""
    model.train()
    total, count = 0.0, 0
    for step, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), targets)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step}; "
                                     "lower train.lr or check the inputs. The last good checkpoint is kept.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_per_batch:
            scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
    return total / max(count, 1)


@torch.inference_mode()
def predict_probs(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and logits for every image of `loader`, in order (model in eval mode)."""
    model.eval()
    logits = [model(images.to(device, non_blocking=True)).float().cpu() for images, _ in loader]
    logits = torch.cat(logits)
    return logits.softmax(dim=1).numpy(), logits.numpy()


def _validate(model, loader, targets, loss_fn, device) -> dict[str, float]:
    probs, logits = predict_probs(model, loader, device)
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))
    return {"loss": loss, **classification_metrics(targets, probs)}


def _is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if MAXIMISE[monitor] else value < best


def _save_state(path: Path, **state) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, fingerprint: str) -> dict | None:
    """A checkpoint to resume from, or None when absent or made by a different config."""
    if not path.is_file():
        return None
    state = safe_torch_load(path)
    if state.get("fingerprint") != fingerprint:
        print(f"[train] {path} was made with a different config; starting this fold afresh")
        return None
    return state


def _oof_frame(data: _FoldData, fold: int, probs: np.ndarray) -> pd.DataFrame:
    rows = data.val_idx
    frame = pd.DataFrame({"row": rows, "label": data.table["label"].to_numpy()[rows], "fold": fold})
    for c, name in enumerate(data.classes):
        frame[f"prob_{name}"] = probs[:, c]
    return frame


def fit(cfg: Config, fold: int, log=print, on_epoch=None) -> Path:
    """Train one fold end to end (resuming if a checkpoint exists); returns the weights path.

    `on_epoch(epoch, metrics)` is called after each epoch's checkpoint is saved, with the
    validation metrics (`loss`, `accuracy`, `f1_macro`); it may raise to stop (e.g. Optuna pruning).
    """
    device = resolve_device(cfg.train.device)
    data = _fold_data(cfg, fold)
    out = cfg.fold_dir(fold)
    state_dir = out / "state"
    fingerprint = stage_fingerprint(cfg, "train")
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, len(data.classes)).to(device)
    optimizer = create_optimizer_v2(model, opt=cfg.train.optimizer, lr=cfg.train.lr,
                                    weight_decay=cfg.train.weight_decay, momentum=cfg.train.momentum)
    steps = math.ceil(len(data.train_idx) / cfg.train.batch_size)
    scheduler = _scheduler(cfg, optimizer, steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)
    val_ds = ImageDataset(data.table["image"].to_numpy()[data.val_idx], data.targets[data.val_idx],
                          build_transform(cfg.augment, train=False))
    val_loader = _loader(val_ds, cfg, device)
    val_targets = data.targets[data.val_idx]
    amp_dtype = torch.bfloat16 if cfg.train.amp and device.type == "cuda" else None

    history, best, start = [], None, 0
    state = _load_state(state_dir / "last.pt", fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        log(f"[fold {fold}] resuming after epoch {state['epoch']}")

    log(f"[fold {fold}] {len(data.train_idx)} train / {len(data.val_idx)} val images, "
        f"{len(data.classes)} classes, {cfg.model.name} on {device}")
    for epoch in range(start, cfg.train.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout etc.: same draws after a resume
        tick = time.time()
        loader = _train_loader(cfg, data, device, epoch)
        train_loss = train_one_epoch(model, loader, optimizer, loss_fn, device, epoch, scheduler,
                                     step_per_batch=cfg.train.scheduler == "onecycle", amp_dtype=amp_dtype)
        metrics = _validate(model, val_loader, val_targets, loss_fn, device)
        lr = optimizer.param_groups[0]["lr"]
        _step_epoch_scheduler(cfg, scheduler, metrics)
        row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in metrics.items()},
               "lr": lr, "seconds": round(time.time() - tick, 2)}
        history.append(row)
        improved = _is_better(metrics[cfg.train.monitor], best, cfg.train.monitor)
        if improved:
            best = metrics[cfg.train.monitor]
            save_weights(model, state_dir / "best.safetensors", {"epoch": epoch})
        write_csv_atomic(out / "metrics.csv", pd.DataFrame(history))
        _save_state(state_dir / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), epoch=epoch, best=best, history=history,
                    fingerprint=fingerprint)
        log(f"[fold {fold}] epoch {epoch + 1}/{cfg.train.epochs} loss {train_loss:.4f} "
            f"val_loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} f1 {metrics['f1_macro']:.4f} "
            f"lr {lr:.2e} {row['seconds']:.1f}s{' *' if improved else ''}")
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return _finish_fold(cfg, fold, data, model, val_loader, device, best, fingerprint)


def _step_epoch_scheduler(cfg: Config, scheduler, metrics: dict) -> None:
    if cfg.train.scheduler == "onecycle":
        return  # stepped per batch
    if cfg.train.scheduler == "plateau":
        scheduler.step(metrics[cfg.train.monitor])
    else:
        scheduler.step()


def _finish_fold(cfg, fold, data, model, val_loader, device, best, fingerprint) -> Path:
    """Out-of-fold probabilities from the best weights, then the weights themselves (last)."""
    out = cfg.fold_dir(fold)
    from .models import load_weights
    best_state = load_weights(out / "state" / "best.safetensors")
    model.load_state_dict(best_state)
    probs, _ = predict_probs(model, val_loader, device)
    write_csv_atomic(out / "oof.csv", _oof_frame(data, fold, probs))
    meta = {"model": cfg.model.name, "classes": data.classes, "fold": fold, "fingerprint": fingerprint,
            "monitor": cfg.train.monitor, "best": best, "image_size": cfg.augment.image_size,
            **classification_metrics(data.targets[data.val_idx], probs)}
    weights = out / "weights.safetensors"
    save_weights(model, weights, meta)
    shutil.rmtree(out / "state", ignore_errors=True)
    return weights
