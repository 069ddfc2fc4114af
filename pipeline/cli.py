"""`python -m pipeline <stage>`: argument parsing only, then a call into the stage."""

from __future__ import annotations

import argparse
import sys

from pipeline import stages
from pipeline.config import load_config

__all__ = ["main"]

DEFAULT_CONFIG = "configs/demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.lr=0.01 model.name=resnet18")


def _cfg(args):
    return load_config(args.config, args.set)


def cmd_resolve(args) -> None:
    variables = stages.resolve(_cfg(args), make_vars=args.make_vars)
    print(" ".join(f"{k}={v}" for k, v in variables.items()) if args.make_vars else variables["RESOLVED"])


def cmd_init(args) -> None:
    from pipeline.tools.detect import InitOptions

    opts = InitOptions(layout=args.layout, train_csv=args.train_csv, image_column=args.image_column,
                       label=args.label, group=args.group, no_group=args.no_group, sample=args.sample,
                       id_column=args.id_column)
    stages.init(args.folder, out=args.out, force=args.force, opts=opts)


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="the competition's folder, as downloaded (only read)")
    p.add_argument("--out", help="config to write (default: configs/<folder name>.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing config")
    p.add_argument("--layout", choices=("csv", "folders", "mask"), help="how the training images are listed")
    p.add_argument("--train-csv", help="the CSV listing the training images (a file name in the folder)")
    p.add_argument("--image-column", help="the train CSV's column naming each image (a path, or an id)")
    p.add_argument("--label", help="the train CSV's label column")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--group", help="a column whose rows sharing a value stay in one fold (a person, a patient)")
    group.add_argument("--no-group", action="store_true", help="no group column: rows are split freely")
    p.add_argument("--sample", help="the sample submission (a file name in the folder)")
    p.add_argument("--id-column", help="the submission's id column (needed when no sample submission ships)")


def cmd_demo_data(args) -> None:
    stages.demo_data(_cfg(args))


def cmd_mask_data(args) -> None:
    stages.mask_data(_cfg(args))


def cmd_check(args) -> None:
    stages.check(_cfg(args), n_jobs=args.jobs)


def cmd_folds(args) -> None:
    stages.folds(_cfg(args))


def cmd_train(args) -> None:
    stages.train(_cfg(args), args.fold, backend=args.backend, scheduler=args.scheduler, gpus=args.gpus,
                 force=args.force, seeds=args.seed)


def cmd_tune(args) -> None:
    stages.tune(_cfg(args), trials=args.trials, storage=args.storage, out_config=args.out, study_name=args.study_name)


def cmd_predict(args) -> None:
    stages.predict(_cfg(args), args.fold, seeds=args.seed)


def cmd_pseudo(args) -> None:
    stages.pseudo(_cfg(args))


def cmd_merge_seeds(args) -> None:
    stages.merge_seeds(_cfg(args), args.fold)


def cmd_eda(args) -> None:
    stages.eda(_cfg(args))


def cmd_report(args) -> None:
    stages.report(_cfg(args))


def cmd_ensemble(args) -> None:
    stages.ensemble(_cfg(args))


def cmd_score(args) -> None:
    stages.score(_cfg(args))


def cmd_validate(args) -> None:
    cfg = _cfg(args)
    print(f"{stages.validate(cfg, args.submission)}: valid against {cfg.data.sample_submission}")


def cmd_blend(args) -> None:
    stages.blend(args.experiments, output_dir=args.output_dir, out=args.out, oof_source=args.oof_source,
                 voting=args.voting, weights=args.weights, objective=args.objective,
                 logit_adjust_on=args.logit_adjust)


def cmd_stack(args) -> None:
    stages.stack(args.experiments, output_dir=args.output_dir, out=args.out, oof_source=args.oof_source, C=args.C)


def cmd_bundle(args) -> None:
    stages.bundle(_cfg(args), args.out, args.budget, args.images_count, args.device, args.batch_size,
                  args.timing_images)


def cmd_bundle_check(args) -> None:
    stages.bundle_check(_cfg(args), args.bundle, args.device, args.record)


def cmd_score_blend(args) -> None:
    stages.score_combined(args.experiments, output_dir=args.output_dir)


def _stack_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.results.blend import OOF_SOURCES
    from pipeline.results.stack import DEFAULT_C, parse_C

    def c_value(text: str):
        try:
            return parse_C(text)
        except ValueError as exc:   # argparse prints an ArgumentTypeError's own message
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names (folders under --output-dir)")
    p.add_argument("--output-dir", default="outputs", help="where the experiments live (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: <output-dir>/stack-<a>-<b>...)")
    p.add_argument("--oof", dest="oof_source", choices=OOF_SOURCES, default="auto",
                   help="OOF probabilities to fit on: tta (oof_tta.csv), plain (oof.csv), auto (tta where all have it)")
    p.add_argument("--C", type=c_value, default=DEFAULT_C,
                   help="the logistic regression's inverse regularisation strength, or auto: chosen by "
                        "leave-one-fold-out log-loss on the rows it is fitted on (default: %(default)s)")


def _blend_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.results.blend import OBJECTIVES, OOF_SOURCES, VOTING_CHOICES   # a light module: choices only

    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names (folders under --output-dir)")
    p.add_argument("--output-dir", default="outputs", help="where the experiments live (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: <output-dir>/blend-<a>-<b>...)")
    p.add_argument("--oof", dest="oof_source", choices=OOF_SOURCES, default="auto",
                   help="OOF probabilities to fit on: tta (oof_tta.csv), plain (oof.csv), auto (tta where all have it)")
    p.add_argument("--voting", choices=VOTING_CHOICES, default="soft", help="how members combine (default: soft)")
    p.add_argument("--weights", choices=("fitted", "uniform"), default="fitted", help="default: fitted")
    p.add_argument("--objective", choices=OBJECTIVES, default="logloss",
                   help="what the fitted weights optimise on OOF (default: logloss)")
    adj = p.add_mutually_exclusive_group()
    adj.add_argument("--logit-adjust", dest="logit_adjust", action="store_true", default=None,
                     help="apply the OOF-chosen logit adjustment (default: the first experiment's ensemble.logit_adjust)")
    adj.add_argument("--no-logit-adjust", dest="logit_adjust", action="store_false")


def _bundle_arguments(p: argparse.ArgumentParser) -> None:
    def positive(kind):
        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                value = 0
            if not value > 0:
                raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
            return value
        return parse

    p.add_argument("--out", help="the bundle folder (default: outputs/<exp>/bundle)")
    p.add_argument("--budget", type=positive(float), metavar="SECONDS",
                   help="keep the folds and views that predict --images-count images within this time")
    p.add_argument("--images-count", type=positive(int), metavar="N",
                   help="test images the budget is for (default: the local sample submission's rows)")
    p.add_argument("--device", default="auto", help="the target's device: auto, cpu, cuda (default: %(default)s)")
    p.add_argument("--batch-size", type=positive(int), help="the target's batch size (default: tta.batch_size)")
    p.add_argument("--timing-images", type=positive(int), help="images the timings are measured on (default: 64)")


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
        ("pseudo", cmd_pseudo, "pseudo.source's confident test images → outputs/<exp>/pseudo_labels.csv"),
        ("merge-seeds", cmd_merge_seeds, "average each fold's seeds (seeds: [..]) into fold_<k>/"),
        ("tune", cmd_tune, "Optuna search over tune.space → configs/<experiment>-best.yaml"),
        ("ensemble", cmd_ensemble, "vote the folds into submission.csv; print the CV table"),
        ("eda", cmd_eda, "classes, folds, sampling, groups, image sizes, samples, near duplicates → outputs/<exp>/eda/"),
        ("report", cmd_report, "learning curves, OOF confusion/F1, CV table, test distribution → report.html"),
        ("score", cmd_score, "score the submission on held-back test labels"),
        ("validate", cmd_validate, "check a submission CSV against the sample submission"),
        ("bundle", cmd_bundle, "an offline inference folder (predict.py, weights, decisions) → outputs/<exp>/bundle/"),
        ("bundle-check", cmd_bundle_check, "run the bundle on the local test images (python -I, outside the "
                                           "repository) and compare with submission.csv"),
    ]
    for name, func, help_text in stages:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _config_args(p)
        p.set_defaults(func=func)
        if name in ("train", "predict", "merge-seeds"):
            p.add_argument("--fold", type=int, nargs="+", help="fold number(s); default: all")
        if name in ("train", "predict"):
            p.add_argument("--seed", type=int, nargs="+", help="with seeds: [..], only these seed(s); default: all")
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
        if name == "bundle":
            _bundle_arguments(p)
        if name == "bundle-check":
            p.add_argument("--bundle", help="the bundle folder (default: outputs/<exp>/bundle)")
            p.add_argument("--device", help="run it on this device (default: the bundle's)")
            p.add_argument("--record", help="also write its size and speed here (JSON), e.g. docs/figures/bundle.json")
    p = sub.add_parser("init", help="write a commented config for a competition's folder, printing each decision")
    _init_arguments(p)
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("blend", help="blend finished experiments, weights fitted on their out-of-fold predictions")
    _blend_arguments(p)
    p.set_defaults(func=cmd_blend)
    p = sub.add_parser("stack", help="stack finished experiments: a logistic regression on their OOF log-probabilities")
    _stack_arguments(p)
    p.set_defaults(func=cmd_stack)
    p = sub.add_parser("score-blend", help="score outputs/{blend,stack}-<a>-<b> on held-back test labels")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="the experiments the blend / stack was made of")
    p.add_argument("--output-dir", default="outputs", help="where the experiments live (default: %(default)s)")
    p.set_defaults(func=cmd_score_blend)
    # Listed for --help only: main() hands `bench ...` (`gpu-check ...`) to pipeline.tools before parsing, so that
    # building this parser (at every Make parse) never imports torch.
    sub.add_parser("bench", help="throughput of the data path vs the bare model → outputs/bench.json "
                                 "(python -m pipeline bench --help)")
    sub.add_parser("gpu-check", help="the CUDA paths proved on a GPU in under 8 minutes → outputs/gpu-check.json "
                                     "(python -m pipeline gpu-check --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from pipeline.tools.bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["gpu-check"]:
        from pipeline.tools.gpu_check import main as gpu_check_main
        return gpu_check_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # user-fixable: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
