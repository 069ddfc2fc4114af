"""The optimizer and the learning-rate schedule a config names (timm's optimizer factory, torch's schedulers)."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay

from pipeline.config import Config
from pipeline.metrics import MAXIMISE

__all__ = ["build_optimizer", "build_scheduler", "step_epoch_scheduler", "FUSED_OPTIMIZERS"]

# The optimizers torch has fused kernels for (CPU and CUDA): one pass over each tensor instead of a dozen
# per-tensor operations. resnet10t's AdamW step on the CPU: 3.8 ms instead of 21.8 (one thread), about a
# tenth of the demo's whole training step. The same update; only the rounding of its sums differs.
FUSED_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on norms and biases; optional lower backbone rate."""
    t = cfg.train
    if t.backbone_lr is None:
        params = model
    else:
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        head = torch.nn.ParameterList([p for p in model.parameters() if id(p) in head_ids])
        body = torch.nn.ParameterList([p for p in model.parameters() if id(p) not in head_ids])
        params = ([dict(g, lr=t.lr) for g in param_groups_weight_decay(_Wrap(head), t.weight_decay)]
                  + [dict(g, lr=t.backbone_lr) for g in param_groups_weight_decay(_Wrap(body), t.weight_decay)])
    fused = {"fused": True} if t.optimizer in FUSED_OPTIMIZERS else {}
    return create_optimizer_v2(params, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
                               **fused)


class _Wrap(torch.nn.Module):
    """Lets timm's weight-decay grouping (which wants a module) see a list of parameters."""

    def __init__(self, params: torch.nn.ParameterList):
        super().__init__()
        self.params = params


def build_scheduler(cfg: Config, optimizer, updates_per_epoch: int):
    """The learning-rate schedule `train.scheduler` names, after `train.warmup_epochs` of linear warmup."""
    t = cfg.train
    epochs = t.epochs - t.warmup_epochs
    if t.scheduler == "plateau":  # stepped on the monitored metric, in its direction
        mode = "max" if MAXIMISE[t.monitor] else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=t.gamma,
                                                          patience=t.plateau_patience)
    if t.scheduler == "onecycle":  # stepped per optimizer update; has its own warmup
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=t.epochs * updates_per_epoch)
    if t.scheduler == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    elif t.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    else:
        main = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if t.warmup_epochs == 0:
        return main
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=t.warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[t.warmup_epochs])


def step_epoch_scheduler(cfg: Config, scheduler, metrics: dict) -> None:
    """The end-of-epoch step: plateau on the monitored metric, onecycle not at all (it steps per update)."""
    if cfg.train.scheduler == "onecycle":
        return  # stepped per update
    if cfg.train.scheduler == "plateau":
        scheduler.step(metrics[cfg.train.monitor])
    else:
        scheduler.step()
