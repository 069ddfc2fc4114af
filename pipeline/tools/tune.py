"""Hyperparameter search with Optuna: `tune(cfg)` → a study in a database + `configs/<exp>-best.yaml`.

The search space is `tune.space` in the experiment config, one entry per dotted key::

    tune:
      trials: 20
      folds: [0]                 # folds trained per trial; the objective is their out-of-fold macro-F1
      pruner: median             # or none
      space:
        train.lr:           {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        train.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
        train.batch_size:   {type: int, low: 32, high: 128, step: 32}
        model.name:         {type: categorical, choices: [resnet10t, resnet18]}
        loss.name:          {type: categorical, choices: [ce, focal]}

Types: `float` and `int` need `low` and `high` (optional `log`, or `step`); `categorical`
needs a non-empty `choices` list of plain values. Keys must be training keys (under
`model.`, `augment.`, `sampling.`, `train.`, `loss.`, `mask.`, or `seed`): the data,
the folds and the output locations are the same for every trial. Every bound and
choice is checked as a config value before any trial runs; a bad entry is a
ConfigError naming `tune.space.<key>`.

Each trial is a copy of the config with the trial's values and `output_dir` set to
`<exp_dir>/trials/<number>`, so trials never touch the real run's files. It trains
`tune.folds` with `train.fit` (the real folds file, the real data) and returns their
out-of-fold macro-F1. After every epoch the validation macro-F1 is reported to Optuna
(step = fold position x epochs + epoch) and the median pruner stops trials that are
below the median of earlier trials at the same step (after 5 trials and 1 epoch).
A trial whose loss diverges is pruned, not fatal.

Storage and resuming: the study lives in a real database, by default
`sqlite:///<output_dir>/<experiment>/tune.db`; any SQLAlchemy URL Optuna accepts works
(`postgresql://user@host/db` for many machines). `tune.trials` is the *total* number of
finished (complete or pruned) trials the study should have: rerunning after a kill
runs only the missing ones. A trial killed mid-way is noticed through its heartbeat
(within ~2 minutes), marked failed and rerun with the same parameters in the same
trial folder, so its folds resume from their last epoch.

Parallel search: start `python -m pipeline tune` several times (one per GPU:
`CUDA_VISIBLE_DEVICES=k`, or on several machines) against one storage URL; they share
the study and stop at `tune.trials` in total. Use PostgreSQL/MySQL rather than SQLite
across machines (SQLite on NFS is unsafe).

When the study is done, the best trial is written as a ready config (default
`configs/<experiment>-best.yaml`): the original config with the best values applied.
"""

from __future__ import annotations

import difflib
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from pipeline.config import Config, ConfigError, config_to_dict, flatten, load_config, matches, with_values
from pipeline.stamps import STAGE_KEYS

__all__ = ["tune", "validate_space", "default_storage", "trials_table", "TUNABLE_PREFIXES"]

# Keys a trial may change: what training depends on, minus the data and the folds.
TUNABLE_PREFIXES = tuple(p for p in STAGE_KEYS["train"] if not p.startswith(("data.", "folds.")))
SPACE_TYPES = ("float", "int", "categorical")
_SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


def _number(where: str, spec: dict, name: str, kind: str):
    value = spec[name]
    if isinstance(value, str):  # PyYAML reads `1e-4` as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value):
        expected = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{where}.{name}: expected {expected}, got {spec[name]!r}")
    return int(value) if kind == "int" else float(value)


def validate_space(cfg: Config) -> dict[str, dict]:
    """Check `tune.space`; returns {key: normalised spec}. Errors are ConfigErrors naming `tune.space.<key>`."""
    space = cfg.tune.space
    if not space:
        raise ConfigError("tune.space: empty; add at least one key, e.g. "
                          "tune.space: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
    base = config_to_dict(cfg)
    flat = flatten(base)
    out = {}
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if key not in flat:
            close = difflib.get_close_matches(str(key), list(flat), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: '{key}' is not a config key.{hint}")
        if not matches(key, TUNABLE_PREFIXES):
            raise ConfigError(f"{where}: '{key}' is not a training key; a trial may change only keys under "
                              + ", ".join(TUNABLE_PREFIXES))
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in SPACE_TYPES:
            raise ConfigError(f"{where}.type: {kind!r} is not one of: {', '.join(SPACE_TYPES)}")
        unknown = set(spec) - _SPEC_KEYS[kind]
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)} for type {kind}; "
                              f"allowed: {', '.join(sorted(_SPEC_KEYS[kind]))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
            for c in choices:
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{where}.choices: {c!r} is not a plain value (string, number, bool, null)")
            norm = {"type": kind, "choices": list(choices)}
            candidates = list(choices)
        else:
            missing = [b for b in ("low", "high") if b not in spec]
            if missing:
                raise ConfigError(f"{where}: type {kind} needs {' and '.join(missing)}")
            low, high = _number(where, spec, "low", kind), _number(where, spec, "high", kind)
            if low > high:
                raise ConfigError(f"{where}: low ({low}) must not exceed high ({high})")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
            if log and low <= 0:
                raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
            norm = {"type": kind, "low": low, "high": high, "log": log}
            if spec.get("step") is not None:
                if log:
                    raise ConfigError(f"{where}: use either log or step, not both")
                step = _number(where, spec, "step", kind)
                if step <= 0:
                    raise ConfigError(f"{where}.step: must be positive, got {step}")
                norm["step"] = step
            candidates = [low, high]
        for value in candidates:  # every bound and choice must be a valid value of that key
            try:
                load_config(None, with_values(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"{where}: value {value!r} is not valid for this config: {exc}") from None
        out[key] = norm
    return out


def _suggest(trial, key: str, spec: dict):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(key, spec["choices"])
    suggest = trial.suggest_float if spec["type"] == "float" else trial.suggest_int
    kwargs = {"log": spec["log"]}
    if "step" in spec:
        kwargs = {"step": spec["step"]}
    return suggest(key, spec["low"], spec["high"], **kwargs)


def default_storage(cfg: Config) -> str:
    return f"sqlite:///{cfg.exp_dir / 'tune.db'}"


def _make_storage(url):
    """A heartbeat-enabled RDB storage: killed trials are failed and retried with their parameters."""
    import optuna

    if not isinstance(url, str):
        return url  # already a storage object
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats and retries are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True)
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                          heartbeat_stale_trial_callback=retry)


def _redact(url) -> str:
    if not isinstance(url, str):
        return type(url).__name__
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _oof_score(cfg: Config, folds: list[int]) -> tuple[float, dict]:
    """The competition metric of the concatenated out-of-fold predictions of `folds` (and each fold's own)."""
    from pipeline.metrics import metric_value
    from pipeline.predict.probs import PROB_PREFIX, class_ids

    from pipeline.fileio import read_table

    frames = [read_table(cfg.fold_dir(k) / "oof.csv") for k in folds]
    oof = pd.concat(frames, ignore_index=True)
    prob_cols = [c for c in oof.columns if c.startswith(PROB_PREFIX)]
    classes = [c[len(PROB_PREFIX):] for c in prob_cols]

    def score(frame):
        y = class_ids(frame["label"], classes, "oof.csv")
        return metric_value(cfg.competition.metric, y, frame[prob_cols].to_numpy(dtype=np.float64))

    return score(oof), {int(k): score(f) for k, f in zip(folds, frames)}


def trials_table(study) -> pd.DataFrame:
    """number, state, value and one column per parameter, in trial order."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params"))
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "value"])
    frame = frame.rename(columns=lambda c: c[len("params_"):] if c.startswith("params_") else c)
    first = [c for c in ("number", "state", "value") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]].sort_values("number")


def tune(cfg: Config, trials: int | None = None, storage=None, out_config: str | Path | None = None,
         study_name: str | None = None, log: Callable[[str], Any] = print):
    """Run (or resume) the study until it has `trials` finished trials; write the best config.

    trials: total finished trials wanted (default `tune.trials`). storage: an Optuna
    storage URL or object (default `tune.storage`, else SQLite in the experiment folder).
    out_config: where the best config goes (default `configs/<experiment>-best.yaml`).
    Returns the `optuna.Study`.
    """
    import optuna

    space = validate_space(cfg)
    trials = cfg.tune.trials if trials is None else int(trials)
    folds = _tune_folds(cfg, trials)
    url = storage or cfg.tune.storage or default_storage(cfg)
    name = study_name or cfg.tune.study_name or f"{cfg.experiment}-tune"
    study = _open_study(cfg, url, name)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=finished_states))
    base = config_to_dict(cfg)
    remaining = max(0, trials - finished)
    log(f"[tune] study '{name}' in {_redact(url)}: {finished} finished trial(s), running {remaining} more "
        f"(folds {folds}, objective: out-of-fold {cfg.competition.metric})")
    if remaining:
        study.optimize(_objective(study, cfg, space, folds, base, log), n_trials=remaining, gc_after_trial=True,
                       catch=(ConfigError,),
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished_states)])
    table = trials_table(study)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log(table.to_string(index=False) if not table.empty else "(no trials)")
    _write_best(cfg, study, base, folds, f"Optuna study '{name}' ({_redact(url)})", out_config, log)
    return study


def _tune_folds(cfg: Config, trials: int) -> list[int]:
    """`tune.folds`, checked (and the folds file exists), before any trial starts."""
    from pipeline.train.parallel import check_fold_list

    if trials < 1:
        raise ConfigError(f"tune.trials: must be at least 1; got {trials}")
    if not cfg.tune.folds:
        raise ConfigError(f"tune.folds: must list folds in 0..{cfg.folds.n_splits - 1}")
    try:
        return check_fold_list(cfg, cfg.tune.folds)
    except ValueError as exc:
        raise ConfigError(f"tune.folds: {exc}") from None


def _open_study(cfg: Config, url, name: str):
    """Create or load the study (maximising the metric, or minimising the log-loss), with a sampler seeded
    for this session."""
    import optuna

    from pipeline.config import COMPETITION_METRICS

    pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
              if cfg.tune.pruner == "median" else optuna.pruners.NopPruner())
    direction = "maximize" if COMPETITION_METRICS[cfg.competition.metric] else "minimize"
    study = optuna.create_study(storage=_make_storage(url), study_name=name, direction=direction,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"tune.study_name: study '{name}' in {_redact(url)} does not {direction} "
                          f"{cfg.competition.metric}: name a new study")
    # A different seed per session: a resumed search does not redraw the first session's values.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    return study


def _objective(study, cfg: Config, space: dict, folds: list[int], base: dict, log):
    """The trial function: train `folds` with the drawn values (pruned on the way), return the OOF score."""
    import optuna

    from pipeline.fileio import folder_lock
    from pipeline.train.loop import NonFiniteLossError, fit
    from pipeline.train.parallel import fold_is_done

    trials_root, metric = cfg.exp_dir / "trials", cfg.competition.metric

    def objective(trial) -> float:
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        # A retried (killed) trial reuses its predecessor's folder, so its folds resume.
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        number = frozen.system_attrs.get("failed_trial", trial.number)
        out_dir = trials_root / str(number)
        tcfg = load_config(None, {**with_values(base, params), "output_dir": str(out_dir)})
        trial.set_user_attr("output_dir", str(out_dir))
        log(f"[tune] trial {trial.number}: {params}")
        epochs = tcfg.train.epochs
        try:
            for position, fold in enumerate(folds):
                if fold_is_done(tcfg, fold):
                    continue

                def on_epoch(epoch: int, metrics: dict, position=position, fold=fold) -> None:
                    trial.report(float(metrics[metric]), position * epochs + epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"fold {fold} epoch {epoch + 1}: "
                                                 f"val {metric} {metrics[metric]:.4f} worse than the median")

                with folder_lock(tcfg.fold_dir(fold), f"trial {number} fold {fold}", log):
                    fit(tcfg, fold, log=log, on_epoch=on_epoch)
        except NonFiniteLossError as exc:
            trial.set_user_attr("diverged", str(exc))
            _drop_checkpoints(tcfg, folds)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except optuna.TrialPruned:
            _drop_checkpoints(tcfg, folds)
            raise
        value, per_fold = _oof_score(tcfg, folds)
        trial.set_user_attr("fold_" + metric, {str(k): v for k, v in per_fold.items()})
        return value

    return objective


def _write_best(cfg: Config, study, base: dict, folds: list[int], source: str, out_config, log) -> Path:
    """The best trial as a config (experiment `<exp>-best`, same folds file) that must load."""
    import optuna

    from pipeline.fileio import write_text_atomic

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise RuntimeError(f"study '{study.study_name}' has no completed trial (all pruned or failed): "
                           "widen tune.space, set tune.pruner: none, or add trials")
    best = study.best_trial
    best_dict = with_values(base, best.params)
    # Train the best config beside the original, on the same folds file (comparable OOF, blendable).
    best_dict["folds"] = dict(best_dict.get("folds") or {}, name=cfg.folds.name or cfg.experiment)
    best_dict["experiment"] = f"{cfg.experiment}-best"
    load_config(None, best_dict)  # the written config must load
    out = Path(out_config) if out_config is not None else Path("configs") / f"{cfg.experiment}-best.yaml"
    header = (f"# Best trial {best.number} of {source}:\n"
              f"# out-of-fold {cfg.competition.metric} {best.value:.6f} on folds {folds}.\n"
              f"# Tuned values: {best.params}\n")
    write_text_atomic(out, header + yaml.safe_dump(best_dict, sort_keys=False))
    log(f"[tune] best trial {best.number}: {cfg.competition.metric} {best.value:.4f} {best.params} → {out}")
    return out


def _drop_checkpoints(cfg: Config, folds: list[int]) -> None:
    """A stopped trial's resumable checkpoints are dead weight (its metrics.csv stays)."""
    for k in folds:
        shutil.rmtree(cfg.fold_dir(k) / "state", ignore_errors=True)
