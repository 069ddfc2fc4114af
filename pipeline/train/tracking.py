"""Optional experiment tracking: TensorBoard, Weights & Biases, MLflow — off by default.

Each backend is an optional dependency (`pip install -e '.[tracking]'`), imported only when its
`report.*` switch is on, so the default install stays lean. Every epoch's metrics row (the same
row as metrics.csv) goes to every enabled backend.
"""

from __future__ import annotations

import importlib
import math

from pipeline.config import Config, ConfigError, config_to_dict

__all__ = ["Tracker"]


def _require(module: str, key: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{key} is on but '{package}' is not installed: "
                          f"pip install -e '.[tracking]' (or pip install {package}), or set {key}: false") from None


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and k != "epoch" and not math.isnan(float(v))}


class Tracker:
    """Sends each epoch's metrics to the enabled backends; a no-op when none is enabled."""

    def __init__(self, cfg: Config, fold: int):
        r, name = cfg.report, f"{cfg.experiment}-fold{fold}"
        self._writers = []
        if r.tensorboard:
            tb = _require("torch.utils.tensorboard", "report.tensorboard", "tensorboard")
            writer = tb.SummaryWriter(log_dir=str(cfg.exp_dir / "tensorboard" / f"fold_{fold}"))
            self._writers.append((lambda row, step: [writer.add_scalar(k, v, step) for k, v in row.items()],
                                  writer.close))
        if r.wandb:
            wandb = _require("wandb", "report.wandb", "wandb")
            run = wandb.init(project=cfg.experiment, name=name, config=config_to_dict(cfg), reinit=True)
            self._writers.append((lambda row, step: run.log(row, step=step), run.finish))
        if r.mlflow:
            mlflow = _require("mlflow", "report.mlflow", "mlflow")
            mlflow.set_experiment(cfg.experiment)
            mlflow.start_run(run_name=name)
            self._writers.append((lambda row, step: mlflow.log_metrics(row, step=step), mlflow.end_run))

    def log_epoch(self, epoch: int, row: dict) -> None:
        numbers = _numbers(row)
        for write, _ in self._writers:
            write(numbers, epoch)

    def close(self) -> None:
        for _, close in self._writers:
            close()
