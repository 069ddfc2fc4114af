"""`python -m pipeline <stage>`: argument parsing only, then a call into the stage."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_config, write_resolved

__all__ = ["main"]

DEFAULT_CONFIG = "configs/demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.lr=0.01 model.name=resnet18")


def _cfg(args):
    return load_config(args.config, args.set)


# Values that Make pastes into rules and recipes: plain path characters only, so that no config
# value can become shell or Make syntax (a `;`, `$`, quote, space or brace would).
_MAKE_SAFE = re.compile(r"^[A-Za-z0-9_./+,:@%=~-]*$")


def _make_variables(cfg) -> dict[str, tuple[str, str]]:
    """{Make variable: (value, the config key it comes from)} for the Makefile's rules."""
    people_csv = Path(cfg.data.image_root) / "train" / "train.csv"
    mask_inputs = ",".join(str(p) for p in (people_csv, cfg.mask.relabel_file) if p and Path(p).is_file())
    return {"EXP_DIR": (str(cfg.exp_dir), "output_dir / experiment"),
            "RESOLVED": (str(cfg.exp_dir / "config.yaml"), "output_dir / experiment"),
            "FOLDS_FILE": (str(cfg.folds_file), "folds.dir / folds.name"),
            "K": (str(cfg.folds.n_splits), "folds.n_splits"),
            "TRAIN_CSV": (str(cfg.data.train_csv), "data.train_csv"),
            "DEMO": (str(int(cfg.data.demo)), "data.demo"),
            "MASK": (str(int(cfg.mask.enabled)), "mask.enabled"),
            "MASK_INPUTS": (mask_inputs, "data.image_root / mask.relabel_file"),
            "SAMPLE_SUBMISSION": (str(cfg.data.sample_submission), "data.sample_submission")}


def cmd_resolve(args) -> None:
    from pipeline.data.manifest import write_manifests
    from pipeline.tools.preflight import preflight

    cfg = _cfg(args)
    variables = _make_variables(cfg) if args.make_vars else {}
    for name, (value, key) in variables.items():   # before anything is written
        if not _MAKE_SAFE.match(value):
            raise ConfigError(f"{key}: {value!r} cannot be used from Make: paths there may hold only letters, "
                              "digits and _ . / + , : @ % = ~ - (no spaces, quotes, $, ;, braces or other shell "
                              "syntax); rename the file or folder")
    preflight(cfg)      # build everything the config names (remembered while the config is unchanged)
    resolved = write_resolved(cfg)
    write_manifests(cfg)
    if not args.make_vars:
        print(resolved)
        return
    generated = cfg.data.demo or cfg.mask.enabled
    if not generated and not Path(cfg.data.train_csv).is_file():
        raise ConfigError(f"data.train_csv: {cfg.data.train_csv} does not exist (set data.demo: true for the demo)")
    print(" ".join(f"{name}={value}" for name, (value, _) in variables.items()))


def cmd_demo_data(args) -> None:
    from pipeline.competitions.demo import make_demo_dataset
    cfg = _cfg(args)
    if not cfg.data.demo:
        raise ConfigError("data.demo is false: this config uses your own data, there is no demo to write")
    paths = make_demo_dataset(cfg.data.image_root, seed=cfg.data.demo_seed, scale=cfg.data.demo_scale,
                              image_size=max(cfg.augment.image_size, 32))
    print(f"[data] demo dataset written to {paths['root']}")


def cmd_mask_data(args) -> None:
    from pipeline.competitions.mask import make_mask_sample, prepare_from_config
    cfg = _cfg(args)
    if not cfg.mask.enabled:
        raise ConfigError("mask.enabled is false: this config does not use the mask competition's layout")
    if cfg.mask.sample and not (Path(cfg.data.image_root) / "train" / "train.csv").is_file():
        make_mask_sample(cfg.data.image_root, seed=cfg.data.demo_seed)
        print(f"[mask] synthetic sample written to {cfg.data.image_root}")
    prepare_from_config(cfg)


def cmd_check(args) -> None:
    from pipeline.data.check import check_data
    report = check_data(_cfg(args), n_jobs=args.jobs).raise_if_failed()
    print(report.format())


def cmd_folds(args) -> None:
    from pipeline.stages import make_folds
    make_folds(_cfg(args))


def _share_cores_with_make_jobs() -> None:
    """Under `make -jN`, N training processes share the machine: give each its share of the cores.

    Without this each process starts one thread per core and N of them thrash the CPU.
    """
    import os
    import re

    import torch

    jobs = re.search(r"(?:^|\s)-j\s*(\d+)", os.environ.get("MAKEFLAGS", ""))
    if jobs and int(jobs.group(1)) > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(jobs.group(1))))


def cmd_train(args) -> None:
    from pipeline.train.parallel import parse_gpus, pin_gpu, run_folds
    _share_cores_with_make_jobs()
    cfg = _cfg(args)
    folds = args.fold if args.fold is not None else list(range(cfg.folds.n_splits))
    backend = args.backend or cfg.parallel.backend
    gpus = parse_gpus(args.gpus) or cfg.parallel.gpus
    if gpus and backend == "local" and len(folds) == 1:
        pin_gpu(folds[0], gpus)  # before anything initialises CUDA
    run_folds(cfg, folds, backend=backend, scheduler=args.scheduler or cfg.parallel.scheduler, force=args.force)


def cmd_tune(args) -> None:
    from pipeline.tools.tune import tune
    tune(_cfg(args), trials=args.trials, storage=args.storage, out_config=args.out, study_name=args.study_name)


def cmd_predict(args) -> None:
    from pipeline.stages import predict_fold
    cfg = _cfg(args)
    for fold in args.fold if args.fold is not None else range(cfg.folds.n_splits):
        predict_fold(cfg, fold)


def cmd_eda(args) -> None:
    from pipeline.report.eda import write_eda
    write_eda(_cfg(args))


def cmd_report(args) -> None:
    from pipeline.report.run_report import write_report
    write_report(_cfg(args))


def cmd_ensemble(args) -> None:
    from pipeline.stages import ensemble
    ensemble(_cfg(args))


def cmd_score(args) -> None:
    from pipeline.stages import score
    score(_cfg(args))


def cmd_validate(args) -> None:
    from pipeline.predict.submission import validate_for_config
    cfg = _cfg(args)
    print(f"{validate_for_config(cfg, args.submission)}: valid against {cfg.data.sample_submission}")


def cmd_blend(args) -> None:
    from pipeline.predict.blend import run_from_args
    run_from_args(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    stages = [
        ("resolve", cmd_resolve, "validate the config; save it, the per-stage stamps and the image manifests"),
        ("demo-data", cmd_demo_data, "write the embedded demo dataset (scikit-learn's digits)"),
        ("mask-data", cmd_mask_data, "mask competition: its layout → the pipeline's train CSV"),
        ("check", cmd_check, "scan the CSVs and every image once; report all problems at once"),
        ("folds", cmd_folds, "assign stratified (grouped) folds → folds/<name>.csv"),
        ("train", cmd_train, "train fold models (all, or --fold K ...)"),
        ("predict", cmd_predict, "predict the test set with TTA (all folds, or --fold K ...)"),
        ("tune", cmd_tune, "Optuna search over tune.space → configs/<experiment>-best.yaml"),
        ("ensemble", cmd_ensemble, "vote the folds into submission.csv; print the CV table"),
        ("eda", cmd_eda, "classes, folds, sampling, groups, image sizes, samples, near duplicates → outputs/<exp>/eda/"),
        ("report", cmd_report, "learning curves, OOF confusion/F1, CV table, test distribution → report.html"),
        ("score", cmd_score, "score the submission on held-back test labels"),
        ("validate", cmd_validate, "check a submission CSV against the sample submission"),
    ]
    for name, func, help_text in stages:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _config_args(p)
        p.set_defaults(func=func)
        if name in ("train", "predict"):
            p.add_argument("--fold", type=int, nargs="+", help="fold number(s); default: all")
        if name == "train":
            p.add_argument("--backend", choices=("local", "dask"), help="default: parallel.backend")
            p.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786")
            p.add_argument("--gpus", help="comma-separated GPU ids; folds go round-robin")
            p.add_argument("--force", action="store_true", help="retrain folds that are already done")
        if name == "tune":
            p.add_argument("--trials", type=int, help="total finished trials wanted (default: tune.trials)")
            p.add_argument("--storage", help="Optuna storage URL (default: SQLite in the experiment folder)")
            p.add_argument("--study-name", help="default: <experiment>-tune")
            p.add_argument("--out", help="best config path (default: configs/<experiment>-best.yaml)")
        if name == "check":
            p.add_argument("--jobs", type=int, default=-1, help="parallel processes (default: all cores)")
        if name == "resolve":
            p.add_argument("--make-vars", action="store_true", help="print the variables the Makefile needs")
        if name == "validate":
            p.add_argument("submission", nargs="?", help="CSV to check (default: the experiment's submission)")
    from pipeline.predict.blend import add_arguments as add_blend_arguments
    p = sub.add_parser("blend", help="blend finished experiments, weights fitted on their out-of-fold predictions")
    add_blend_arguments(p)
    p.set_defaults(func=cmd_blend)
    # Listed for --help only: main() hands `bench ...` to pipeline.tools.bench before parsing, so that
    # building this parser (at every Make parse) never imports torch.
    sub.add_parser("bench", help="throughput of the data path vs the bare model → outputs/bench.json "
                                 "(python -m pipeline bench --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from pipeline.tools.bench import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # user-fixable: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
