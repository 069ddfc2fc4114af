"""One function per Make stage; each reads files and writes files, the work is in the subpackages.

    init      a competition's folder      → configs/<name>.yaml (nothing else; the folder is only read)
    resolve   config                      → outputs/<exp>/{config.yaml, stamps/*.json}, lists/ of folder layouts
    data      (demo / mask layout)        → the train CSV and images
    check     train CSV, sample, images   → a report; each image's verdict kept (data.verdicts)
    folds     train CSV                   → folds/<name>.csv
    pseudo    a finished experiment       → pseudo_labels.csv (its confident test images; pseudo.source)
    train     folds file, images          → fold_<k>/{weights.safetensors, oof.csv, metrics.csv, ...}
    predict   fold weights, images        → fold_<k>/{oof_tta.csv, test_probs.csv}
    merge-seeds  seed_<s>/fold_<k>/ files → fold_<k>/ (seeds averaged within the fold; `seeds` runs)
    ensemble  every fold's probabilities  → {cv.csv, cv.md, oof.csv, ensemble.json, submission.csv}
    score     submission, true labels     → score.csv (score_combined: a blend's / stack's folder)
    blend / stack  finished experiments   → outputs/{blend,stack}-<a>-<b>/{cv.csv, submission.csv, ...}
    eda / report                          → eda/index.html / report.html
    bundle    the finished experiment     → bundle/ (predict.py, weights, decisions: offline inference)
    bundle-check  bundle, test images     → the bundle's submission compared with submission.csv

Heavy libraries are imported inside the stages, so that `python -m pipeline` (which Make runs at
parse time) starts fast.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, ConfigError, seed_config

__all__ = ["resolve", "init", "demo_data", "mask_data", "check", "folds", "train", "predict", "ensemble", "score",
           "validate", "eda", "report", "tune", "blend", "stack", "score_combined", "pseudo", "merge_seeds",
           "bundle", "bundle_check"]


def resolve(cfg: Config, make_vars: bool = False) -> dict[str, str]:
    """Check everything the config names, save it with its stamps and the image manifests.

    Returns the Make variables (checked to be safe to paste into rules) when `make_vars`.
    """
    from pipeline.stamps import write_resolved
    from pipeline.data.layouts import write_layout_files
    from pipeline.data.manifest import write_manifests
    from pipeline.data.tables import read_train_table
    from pipeline.makevars import make_variables
    from pipeline.tools.preflight import preflight

    variables = make_variables(cfg) if make_vars else {}   # refused before anything is written
    write_layout_files(cfg)    # class folders / a test folder → the CSVs every stage reads
    try:
        table = read_train_table(cfg)      # read once for both: Make runs this at every call
    except (OSError, ValueError):
        table = None                       # not there yet (demo, mask) or broken: each says so its own way
    preflight(cfg, table)
    resolved = write_resolved(cfg)
    write_manifests(cfg, table)
    if make_vars and not (cfg.data.demo or cfg.mask.enabled) and not Path(cfg.data.train_csv).is_file():
        raise ConfigError(f"data.train_csv: {cfg.data.train_csv} does not exist (set data.demo: true for the demo)")
    return variables or {"RESOLVED": str(resolved)}


def init(folder, out=None, force: bool = False, opts=None, log=print) -> Path:
    """A commented config for a competition's folder (make init DATA=<folder>), each decision printed."""
    from pipeline.tools.init import init_config

    return init_config(folder, out, force, opts, log)


def demo_data(cfg: Config, log=print) -> Path:
    """The embedded demo dataset (scikit-learn's digits) at `data.image_root`."""
    from pipeline.competitions.demo import make_demo_dataset

    if not cfg.data.demo:
        raise ConfigError("data.demo is false: this config uses your own data, there is no demo to write")
    paths = make_demo_dataset(cfg.data.image_root, seed=cfg.data.demo_seed, scale=cfg.data.demo_scale,
                              image_size=max(cfg.augment.image_size, 32), task=cfg.data.demo_task)
    log(f"[data] demo dataset written to {paths['root']}")
    return paths["train_csv"]


def mask_data(cfg: Config, log=print) -> Path:
    """The mask competition's layout → the pipeline's train CSV (the synthetic sample first, when asked)."""
    from pipeline.competitions.mask import make_mask_sample, people_csv, prepare_from_config

    if not cfg.mask.enabled:
        raise ConfigError("mask.enabled is false: this config does not use the mask competition's layout")
    if cfg.mask.sample and not people_csv(cfg.data.image_root).is_file():
        make_mask_sample(cfg.data.image_root, seed=cfg.data.demo_seed)
        log(f"[mask] synthetic sample written to {cfg.data.image_root}")
    return prepare_from_config(cfg, log=log)


def check(cfg: Config, n_jobs: int = -1, log=print) -> None:
    """Scan the CSVs and every image not checked unchanged before; raise listing every problem, else print
    the summary. The verdicts are kept for the next stages (:mod:`pipeline.data.verdicts`)."""
    import time

    from pipeline.data.check import check_data
    from pipeline.data.verdicts import Verdicts, verdicts_path

    tick = time.perf_counter()
    verdicts = Verdicts(verdicts_path(cfg))
    report = check_data(cfg, n_jobs=n_jobs, verdicts=verdicts)
    verdicts.save()
    log(report.raise_if_failed().format())
    seconds, n = time.perf_counter() - tick, report.images_checked
    log(f"[check] {n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s; "
        f"{n - report.images_reused} decoded, {report.images_reused} verdicts reused)")


def folds(cfg: Config, log=print) -> Path:
    from pipeline.data.fold_file import make_folds

    return make_folds(cfg, log)


def _seed_configs(cfg: Config, seeds) -> list[Config]:
    """The configs to run: `cfg` itself, or one per seed (all of `seeds:`, or those asked for)."""
    if seeds and not cfg.seeds:
        raise ConfigError(f"--seed {' '.join(map(str, seeds))}: this config has no `seeds` list; set seeds: [0, 1, 2]")
    return [seed_config(cfg, s) for s in (seeds or cfg.seeds)] if cfg.seeds else [cfg]


def train(cfg: Config, fold_ids=None, backend=None, scheduler=None, gpus=None, force: bool = False,
          seeds=None) -> dict:
    """Train the folds (all, or `fold_ids`), locally or on Dask; done folds are skipped unless `force`.

    With `seeds:` each fold trains once per seed (all of them, or `seeds`) in ``seed_<s>/fold_<k>/``.
    """
    from pipeline.data.check import require_train_images

    configs = _seed_configs(cfg, seeds) if cfg.seeds or seeds else None
    require_train_images(cfg)      # an image broken since the check is refused before any training
    if configs is not None:
        return {one.seed: _train(one, fold_ids, backend, scheduler, gpus, force) for one in configs}
    return _train(cfg, fold_ids, backend, scheduler, gpus, force)


def _train(cfg: Config, fold_ids, backend, scheduler, gpus, force: bool) -> dict:
    from pipeline.device import share_cores_with_make_jobs
    from pipeline.train.parallel import parse_gpus, pin_gpu, run_folds

    share_cores_with_make_jobs()
    fold_ids = list(fold_ids) if fold_ids is not None else list(range(cfg.folds.n_splits))
    backend = backend or cfg.parallel.backend
    gpus = parse_gpus(gpus) or cfg.parallel.gpus
    if gpus and backend == "local" and len(fold_ids) == 1:
        pin_gpu(fold_ids[0], gpus)  # before anything initialises CUDA
    return run_folds(cfg, fold_ids, backend=backend, scheduler=scheduler or cfg.parallel.scheduler, force=force)


def predict(cfg: Config, fold_ids=None, log=print, seeds=None) -> list[Path]:
    """Predict the folds with TTA; with `seeds:`, every seed's (or `seeds`'), then each fold's seed average
    (only when every seed was predicted)."""
    from pipeline.predict.fold import predict_fold

    fold_ids = list(fold_ids) if fold_ids is not None else list(range(cfg.folds.n_splits))
    paths = [predict_fold(one, k, log=log) for one in _seed_configs(cfg, seeds) for k in fold_ids]
    if cfg.seeds and not seeds:
        merge_seeds(cfg, fold_ids, log)
    return paths


def merge_seeds(cfg: Config, fold_ids=None, log=print) -> None:
    from pipeline.predict.seeds import merge_seeds as average_seeds

    for k in fold_ids if fold_ids is not None else range(cfg.folds.n_splits):
        average_seeds(cfg, k, log)


def pseudo(cfg: Config, log=print) -> Path:
    from pipeline.results.pseudo import build_pseudo_labels

    return build_pseudo_labels(cfg, log)


def ensemble(cfg: Config, log=print) -> Path:
    from pipeline.results.ensemble_stage import ensemble as vote_folds

    return vote_folds(cfg, log=log)


def score(cfg: Config, log=print):
    from pipeline.results.score import score as score_submission

    return score_submission(cfg, log=log)


def validate(cfg: Config, path=None) -> Path:
    from pipeline.results.submission import validate_for_config

    return validate_for_config(cfg, path)


def eda(cfg: Config, log=print) -> Path:
    from pipeline.report.eda import write_eda

    return write_eda(cfg, log=log)


def report(cfg: Config, log=print) -> Path:
    from pipeline.report.run_report import write_report

    return write_report(cfg, log=log)


def tune(cfg: Config, trials=None, storage=None, out_config=None, study_name=None):
    from pipeline.tools.tune import tune as search

    return search(cfg, trials=trials, storage=storage, out_config=out_config, study_name=study_name)


def blend(experiments: list[str], **options) -> Path:
    from pipeline.results.blend import blend as blend_experiments

    return blend_experiments(experiments, **options)


def stack(experiments: list[str], **options) -> Path:
    from pipeline.results.stack import stack as stack_experiments

    return stack_experiments(experiments, **options)


def score_combined(experiments: list[str], output_dir="outputs", log=print) -> list[Path]:
    from pipeline.results.score_blend import score_combined as score_folders

    return score_folders(experiments, output_dir=output_dir, log=log)


def bundle(cfg: Config, out=None, budget=None, images_count=None, device="auto", batch_size=None,
           timing_images=None, log=print) -> Path:
    from pipeline.bundle import build_bundle
    from pipeline.bundle.build import DEFAULT_TIMING_IMAGES

    return build_bundle(cfg, out, budget, images_count, device, batch_size, timing_images or DEFAULT_TIMING_IMAGES,
                        log)


def bundle_check(cfg: Config, bundle=None, device=None, record=None, log=print):
    from pipeline.bundle import check_bundle

    return check_bundle(cfg, bundle, device, record, log)
