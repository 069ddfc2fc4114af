"""The verdicts of `gpu-check`: each check's pass/fail decision and its one-line figures, from the figures
its run gathered. Pure functions of dicts, so they are tested on the CPU with constructed figures."""

from __future__ import annotations

import math

from pipeline.tools.bench_report import noaug_variant

__all__ = ["GPU_EFFICIENCY_FLOOR", "OOF_TOLERANCE", "FOLD_OOF_TOLERANCE", "AMP_VARIANTS", "bench_figures", "judge_bench", "judge_amp",
           "judge_parallel", "judge_resume", "describe"]

# Beside a GPU the data path may cost at most 10% of the model's pace, unless the loader is what sets it
# (then more cores or workers, not the loop, are the fix). Below this the loop itself is the problem.
GPU_EFFICIENCY_FLOOR = 0.90
# How far a variant's out-of-fold macro-F1 may fall from the float32 run's: the demo's spread over seeds
# (docs/figures/amp_eval.json: three seeds each of off and auto, `python -m pipeline.tools.amp_eval`).
OOF_TOLERANCE = 0.03
# One fold's out-of-fold score (about 450 demo rows) varies more than the five folds' together.
FOLD_OOF_TOLERANCE = 2 * OOF_TOLERANCE
AMP_VARIANTS = {  # name: the SET overrides that make it (the reference first)
    "fp32": {"train.amp": "off", "train.compile": "false"},
    "bf16": {"train.amp": "bf16", "train.compile": "false"},
    "fp16": {"train.amp": "fp16", "train.compile": "false"},
    "compile": {"train.amp": "off", "train.compile": "true"},
}


# ---- 1. bench ---------------------------------------------------------------------------------

def bench_figures(result: dict) -> dict:
    """The figures gpu-check keeps of one `bench` result (its JSON)."""
    heads = result["headline_variants"]
    bound = result["bound"]
    return {"training_efficiency": result["training_headline"]["median"],
            "training_reliable": result["training_headline"]["reliable"],
            "prediction_efficiency": result["prediction_headline"]["median"],
            "prediction_reliable": result["prediction_headline"]["reliable"],
            "train_images_per_s": result["train"][heads["train"]]["images_per_s"],
            "training_efficiency_without_augmentation":
                result["train"].get(noaug_variant(heads["train"]), {}).get("efficiency"),
            "bare_images_per_s": bound["bare_images_per_s"], "loader_images_per_s": bound["loader_images_per_s"],
            "bound": bound["by"], "gpu_peak_mb": result.get("gpu_peak_mb"),
            "settings": {k: result["meta"][k] for k in ("model", "image_size", "batch_size", "amp", "channels_last",
                                                        "loader_workers", "data")}}


def judge_bench(figures: dict) -> tuple[bool, str]:
    """Both runs finished; on the photos, each efficiency was measured (its runs agree) and is at least
    GPU_EFFICIENCY_FLOOR, or training is bound by the loader. The demo's 32 px model outpaces any
    loader: its figures are reported, not judged."""
    problems = [f"the {run} bench did not finish: {figures[run]['error']}" for run in ("demo", "photos")
                if "error" in figures.get(run, {"error": "not run"})]
    if problems:
        return False, "; ".join(problems)
    photos = figures["photos"]
    for phase in ("training", "prediction"):
        eff = photos[f"{phase}_efficiency"]
        if not photos[f"{phase}_reliable"]:
            problems.append(f"photos {phase} efficiency unreliable (its runs disagree, median {eff:.3f})")
        elif eff < GPU_EFFICIENCY_FLOOR and not (phase == "training" and photos["bound"] == "the loader"):
            loop = photos.get("training_efficiency_without_augmentation") if phase == "training" else None
            problems.append(f"photos {phase} efficiency {eff:.3f} < {GPU_EFFICIENCY_FLOOR} while the model, not "
                            "the loader, sets the pace: the loop around the model costs the time"
                            + (f" (without the augmentations {loop:.3f})" if loop is not None else ""))
    if problems:
        return False, "; ".join(problems)
    return True, (f"photos: training {photos['training_efficiency']:.3f}, prediction "
                  f"{photos['prediction_efficiency']:.3f}, bound by {photos['bound']}")


# ---- 2. the demo at each precision -----------------------------------------------------------

def judge_amp(figures: dict) -> tuple[bool, str]:
    """Every variant finished on the GPU with a valid submission, and its out-of-fold score is within
    `figures['tolerance']` of the fp32 run's."""
    runs, tol = figures.get("runs", {}), figures["tolerance"]
    problems = []
    for name in AMP_VARIANTS:
        run = runs.get(name)
        if run is None:
            problems.append(f"{name} did not run")
        elif run.get("error"):
            problems.append(f"{name}: {run['error']}")
        elif not run["validated"]:
            problems.append(f"{name}: the submission did not validate")
        elif set(run["devices"]) != {"cuda"}:
            problems.append(f"{name}: trained on {sorted(run['devices'])}, not cuda")
    reference = runs.get("fp32", {}).get("oof")
    if reference is not None:
        for name, run in runs.items():
            oof = run.get("oof")
            if name != "fp32" and oof is not None and abs(oof - reference) > tol:
                problems.append(f"{name}: OOF {oof:.4f} is {abs(oof - reference):.4f} from fp32's {reference:.4f} "
                                f"(tolerance {tol})")
    if problems:
        return False, "; ".join(problems)
    return True, f"all within {tol} of fp32's OOF {reference:.4f}, submissions valid"


# ---- 3. two folds at once --------------------------------------------------------------------

def judge_parallel(figures: dict) -> tuple[bool, str]:
    """Both ways (`make -j2 train GPUS=<id>`, the Dask backend with two GPU slots on one GPU) finished,
    their two folds were seen training at the same moment, on cuda, and each fold's files are its own."""
    problems = []
    for way in ("make", "dask"):
        run = figures.get(way)
        if run is None:
            problems.append(f"{way}: did not run")
        elif run.get("error"):
            problems.append(f"{way}: {run['error']}")
        else:
            if run["overlap_at_s"] is None:
                problems.append(f"{way}: the two folds never trained at the same moment")
            if set(run["devices"]) != {"cuda"}:
                problems.append(f"{way}: trained on {sorted(run['devices'])}, not cuda")
            problems += [f"{way}: {p}" for p in run["foreign"]]
    if problems:
        return False, "; ".join(problems)
    return True, (f"make -j2 overlapped at {figures['make']['overlap_at_s']:.0f} s, Dask at "
                  f"{figures['dask']['overlap_at_s']:.0f} s; every fold's files its own")


# ---- 4. resume after SIGKILL -----------------------------------------------------------------

def judge_resume(figures: dict) -> tuple[bool, str]:
    """The fold was killed inside an epoch, resumed from its checkpoint and finished; its weights equal
    the uninterrupted run's. Where they differ only because the GPU itself is not deterministic (the two
    runs already differ before the kill, when neither had been interrupted), the fold's out-of-fold
    score must be within the tolerance; if they agree until the kill and differ after it, the resume is
    at fault."""
    if figures.get("error"):
        return False, figures["error"]
    if not figures["killed_mid_epoch"]:
        return False, "the fold was not killed inside an epoch (it finished or the kill came between epochs)"
    if not figures["resumed"]:
        return False, "the rerun did not resume from the checkpoint (no 'resuming after epoch' line)"
    weights = figures["weights"]
    if weights["identical"]:
        return True, "bit-identical weights to the uninterrupted run"
    if figures["metrics_agree_before_kill"]:
        return False, (f"the runs agree up to the kill and differ after the resume ({weights['tensors_differing']} "
                       f"tensors, max |dw| {weights['max_abs_difference']:.3g}): the resume changes the result")
    delta = abs(figures["oof_resumed"] - figures["oof_straight"])
    if not math.isfinite(delta) or delta > figures["tolerance"]:
        return False, (f"not deterministic on this GPU and the resumed fold's OOF {figures['oof_resumed']:.4f} is "
                       f"{delta:.4f} from the uninterrupted {figures['oof_straight']:.4f} "
                       f"(tolerance {figures['tolerance']})")
    return True, (f"not bit-identical: two uninterrupted epochs already differ (cuDNN/atomics are not "
                  f"deterministic); max |dw| {weights['max_abs_difference']:.3g}, fold OOF within {delta:.4f}")


# ---- the table's figures column --------------------------------------------------------------

def describe(name: str, figures: dict) -> str:
    """One line of a check's main figures for the table (what is there of them)."""
    try:
        return _DESCRIBE[name](figures)
    except (KeyError, TypeError, ValueError):
        return ", ".join(f"{k}={v}" for k, v in figures.items() if not isinstance(v, (dict, list)))


def _describe_bench(f: dict) -> str:
    parts = []
    for run in ("demo", "photos"):
        r = f.get(run, {})
        if "error" in r or "training_efficiency" not in r:
            continue
        s = r["settings"]
        loop = r.get("training_efficiency_without_augmentation")
        parts.append(f"{run} {s['model']} {s['image_size']}px: {r['train_images_per_s']:.0f} img/s, train "
                     f"{r['training_efficiency']:.2f}{f' ({loop:.2f} without aug.)' if loop is not None else ''} / "
                     f"predict {r['prediction_efficiency']:.2f}, bound by "
                     f"{r['bound']}, {r['gpu_peak_mb'] or 0:.0f} MB GPU")
    return "; ".join(parts)


def _describe_amp(f: dict) -> str:
    return ", ".join(f"{n} {r['oof']:.4f} ({r['epoch_s_median']:.1f} s/epoch)" for n, r in f["runs"].items()
                     if r.get("oof") is not None)


def _describe_parallel(f: dict) -> str:
    return ", ".join(f"{way} {f[way]['seconds']:.0f} s" for way in ("make", "dask") if way in f and "seconds" in f[way])


def _describe_resume(f: dict) -> str:
    w = f["weights"]
    return (f"killed in epoch {f['epochs_before_kill'] + 1}, resumed; weights "
            + ("identical" if w["identical"] else f"max |dw| {w['max_abs_difference']:.3g}")
            + f"; fold OOF {f['oof_resumed']:.4f} vs {f['oof_straight']:.4f}")


_DESCRIBE = {"bench": _describe_bench, "amp": _describe_amp, "parallel": _describe_parallel, "resume": _describe_resume}
