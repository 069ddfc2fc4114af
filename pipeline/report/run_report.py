"""The experiment report: ``outputs/<exp>/report.html``, one self-contained file.

`write_report(cfg)` reads what the pipeline left behind and writes a single HTML page with
every figure embedded as a base64 PNG (no other file, no network, opens offline; a
Content-Security-Policy makes the browser enforce that):

* per-fold learning curves from ``fold_<k>/metrics.csv``: train/validation loss, the monitored
  metric (best epoch marked), every other validation metric the trainer logged, learning rate;
* the out-of-fold confusion matrix normalised by true class, and per-class F1 (scikit-learn),
  from ``oof_tta.csv`` when the predict stage wrote it (the TTA-merged probabilities the
  ensemble is scored on), else ``oof.csv``;
* first a summary (``ensemble.json``): what the submission is (vote, views, checkpoints, corrections), its
  out-of-fold estimate with the folds' spread, what was not applied and why, warnings, each step of the
  chain with its nested gain ± noise, and the held-back score when ``make score`` ran;
* the cross-validation table (``cv.csv``, every column; rows that carry nothing here folded);
* the predicted test class distribution (``submission.csv``) against the training prior;
* the resolved configuration (``config.yaml``) and, when saved, the package versions (``versions.json``).

Missing inputs raise FileNotFoundError naming every missing file and the make target that
writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import read_table, read_text_csv, write_text_atomic
from pipeline.metrics import confusion, per_class_f1
from pipeline.train.models import read_sidecar
from pipeline.results.formats import format_for_config, labels_of
from pipeline.results.summary import folded_rows, score_items, steps_frame, summary_items
from pipeline.predict.probs import PROB_PREFIX, class_ids, prob_columns
from pipeline.report.pairs import pairs_figure
from pipeline.report.prior_section import prior_shift_section
from pipeline.report.plots import bar_chart, data_uri, esc, heatmap, html_page, html_table, label_axis, new_figure, png_bytes

__all__ = ["write_report", "report_inputs", "report_classes", "learning_curve_figure", "confusion_figure",
           "per_class_f1_figure", "prediction_distribution_table", "headline_metric_columns", "summary_section"]


# ---- inputs ---------------------------------------------------------------------------------------

def report_inputs(cfg: Config) -> dict[str, Path]:
    """The files the report reads; FileNotFoundError listing each missing one and how to make it."""
    exp = cfg.exp_dir
    needed: dict[str, tuple[Path, str]] = {
        "config": (exp / "config.yaml", "any pipeline target writes it, e.g. `make ensemble` "
                                        "(or `python -m pipeline resolve`)"),
    }
    for k in range(cfg.folds.n_splits):
        needed[f"metrics_{k}"] = (cfg.fold_dir(k) / "metrics.csv", f"`make train` (or `make train FOLD={k}`)")
    for name in ("oof", "cv", "submission"):
        needed[name] = (exp / f"{name}.csv", "`make ensemble`")
    missing = [f"  - {path} (run {how})" for path, how in needed.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError("the report needs files that do not exist yet:\n" + "\n".join(missing))
    paths = {name: path for name, (path, _) in needed.items()}
    oof_tta = exp / "oof_tta.csv"
    if oof_tta.is_file():
        paths["oof_tta"] = oof_tta
    return paths


def report_classes(cfg: Config, oof: pd.DataFrame) -> list:
    """Class names in model order: the fold sidecar's list, else the oof file's prob_ columns."""
    try:
        return list(read_sidecar(cfg.fold_dir(0) / "weights.safetensors")["classes"])
    except (FileNotFoundError, ValueError, KeyError):
        pass
    return [c[len(PROB_PREFIX):] for c in oof.columns if c.startswith(PROB_PREFIX)]


# ---- learning curves ------------------------------------------------------------------------------

def headline_metric_columns(metrics: pd.DataFrame, classes: list) -> list[str]:
    """The ``val_*`` columns except the loss and the per-class ``val_f1_<class>`` ones, in file order."""
    per_class = {f"val_f1_{c}" for c in classes}
    return [c for c in metrics.columns
            if c.startswith("val_") and c != "val_loss" and c not in per_class
            and pd.api.types.is_numeric_dtype(metrics[c])]


def _monitor_column(cfg: Config, metrics: pd.DataFrame, headline: list[str]) -> tuple[str | None, bool]:
    from pipeline.metrics import MAXIMISE

    monitor = cfg.train.monitor
    column = "val_loss" if monitor == "loss" else f"val_{monitor}"
    if column in metrics.columns:
        return column, MAXIMISE.get(monitor, True)
    fallback = "val_f1_macro" if "val_f1_macro" in headline else (headline[0] if headline else None)
    return fallback, True


def learning_curve_figure(cfg: Config, fold_metrics: list[pd.DataFrame], classes: list):
    """One row per fold: loss | monitored metric | other validation metrics | learning rate."""
    n = len(fold_metrics)
    fig = new_figure(15, 2.6 * n + 0.4)
    axes = fig.subplots(n, 4, squeeze=False)
    for k, m in enumerate(fold_metrics):
        epoch = m["epoch"].to_numpy() + 1 if "epoch" in m.columns else np.arange(1, len(m) + 1)
        headline, monitor, best = _best_epoch(cfg, m, classes)
        ax_loss, ax_mon, ax_other, ax_lr = axes[k]
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in m.columns:
                ax_loss.plot(epoch, m[col], style, marker="o", markersize=3, label=col.replace("_", " "))
        ax_loss.set_ylabel(f"fold {k}", fontsize=11, fontweight="bold")
        ax_loss.set_title("loss" if k == 0 else "", fontsize=10)
        ax_loss.legend(fontsize=7)
        if best is not None:
            values = m[monitor].to_numpy(dtype=float)
            ax_mon.plot(epoch, values, marker="o", markersize=3, color="C2")
            ax_mon.plot(epoch[best], values[best], marker="*", markersize=12, color="C3",
                        label=f"best {values[best]:.4f} (epoch {epoch[best]})")
            ax_mon.legend(fontsize=7)
        ax_mon.set_title(f"monitored: {monitor or 'none'}" if k == 0 else "", fontsize=10)
        others = [c for c in headline if c != monitor]
        for i, col in enumerate(others):
            if m[col].notna().any():
                ax_other.plot(epoch, m[col], marker="o", markersize=2, label=col[len("val_"):], color=f"C{i % 10}")
        if others:
            ax_other.legend(fontsize=6, ncol=2)
        ax_other.set_title("other validation metrics" if k == 0 else "", fontsize=10)
        if "lr" in m.columns:
            lr = m["lr"].to_numpy(dtype=float)
            ax_lr.plot(epoch, lr, marker="o", markersize=3, color="C4")
            positive = lr[np.isfinite(lr) & (lr > 0)]
            if len(positive) == len(lr) and len(lr) and positive.max() / positive.min() > 20:
                ax_lr.set_yscale("log")
        ax_lr.set_title("learning rate" if k == 0 else "", fontsize=10)
        for ax in axes[k]:
            ax.grid(alpha=0.3)
            ax.set_xlim(0.5, max(epoch.max() if len(epoch) else 1, 1) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if k == n - 1:
            for ax in axes[k]:
                ax.set_xlabel("epoch")
    return fig


def _best_epoch(cfg: Config, m: pd.DataFrame, classes: list) -> tuple[list[str], str | None, int | None]:
    """(headline metric columns, the monitored column, the row of its best epoch or None)."""
    headline = headline_metric_columns(m, classes)
    monitor, maximise = _monitor_column(cfg, m, headline)
    if monitor is None or not m[monitor].notna().any():
        return headline, monitor, None
    values = m[monitor].to_numpy(dtype=float)
    return headline, monitor, int(np.nanargmax(values) if maximise else np.nanargmin(values))


def _fold_summary(cfg: Config, fold_metrics: list[pd.DataFrame], classes: list) -> pd.DataFrame:
    rows = []
    for k, m in enumerate(fold_metrics):
        headline, monitor, best = _best_epoch(cfg, m, classes)
        row = {"fold": k, "epochs": len(m)}
        if best is not None:
            row["best epoch"] = int(m["epoch"].iloc[best]) + 1 if "epoch" in m.columns else best + 1
            for col in ["val_loss"] + headline:
                if col in m.columns:
                    row[col] = float(m[col].iloc[best])
        if "seconds" in m.columns:
            row["train seconds"] = float(m["seconds"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


# ---- out-of-fold figures --------------------------------------------------------------------------

def confusion_figure(y_true: np.ndarray, probs: np.ndarray, classes: list, source: str):
    n = len(classes)
    cm = confusion(y_true, probs).astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(max(5.0, 0.45 * n + 3), 22)
    fig = new_figure(side + 1, side)
    ax = fig.subplots()
    accuracy = float(np.trace(cm) / cm.sum()) if len(y_true) else float("nan")
    heatmap(fig, ax, norm, classes, classes, xlabel="predicted", ylabel="true", aspect="equal",
            title=f"Out-of-fold confusion matrix, rows normalised\n({source}; accuracy {accuracy:.4f})")
    return fig


def per_class_f1_figure(y_true: np.ndarray, probs: np.ndarray, classes: list):
    n = len(classes)
    f1 = per_class_f1(y_true, probs)
    support = np.bincount(y_true, minlength=n)
    fig = new_figure(max(6, 0.5 * n + 2), 4)
    ax = fig.subplots()
    bar_chart(ax, classes, {"F1": f1}, ylabel="F1 (out-of-fold)", annotate=True, fmt="{:.2f}",
              title=f"Per-class F1 (macro F1 {f1.mean():.4f}); n = validation images per class")
    ax.axhline(f1.mean(), color="C3", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.12)
    label_axis(ax, [f"{c}\nn={s}" for c, s in zip(classes, support)], "x")
    return fig, pd.DataFrame({"class": classes, "f1": f1, "support": support})


# ---- test distribution ----------------------------------------------------------------------------

def _training_labels(cfg: Config, oof: pd.DataFrame) -> pd.Series:
    """The training labels: the folds file's (what the models trained on), else the OOF labels."""
    if cfg.folds_file.is_file():
        folds = read_table(cfg.folds_file)
        if "label" in folds.columns:
            return folds["label"]
    return oof["label"]


def prediction_distribution_table(train_labels, predicted, classes: list) -> pd.DataFrame:
    """Per class: training count and share, predicted test count and share, and their ratio."""
    train = pd.Series(train_labels).astype(str).value_counts()
    pred = pd.Series(predicted).astype(str).value_counts()
    names = [str(c) for c in classes]
    names += sorted(set(pred.index) - set(names))  # a prediction outside the classes still shows up
    train = train.reindex(names, fill_value=0)
    pred = pred.reindex(names, fill_value=0)
    t_share = train / max(train.sum(), 1)
    p_share = pred / max(pred.sum(), 1)
    ratio = np.divide(p_share.to_numpy(), t_share.to_numpy(), out=np.full(len(names), np.nan),
                      where=t_share.to_numpy() > 0)
    return pd.DataFrame({"class": names, "train images": train.to_numpy().astype(np.int64),
                         "train share": t_share.to_numpy(), "predicted test images": pred.to_numpy().astype(np.int64),
                         "predicted share": p_share.to_numpy(), "predicted / train share": ratio})


def _test_distribution_figure(table: pd.DataFrame):
    fig = new_figure(max(6, 0.55 * len(table) + 2), 4)
    ax = fig.subplots()
    bar_chart(ax, table["class"].tolist(), {"training prior": table["train share"],
                                            "predicted test": table["predicted share"]},
              ylabel="share of images",
              title=f"Predicted test classes ({int(table['predicted test images'].sum())} images) vs training prior")
    return fig


# ---- the page -------------------------------------------------------------------------------------

def _figure(fig, alt: str, caption: str = "") -> str:
    cap = f"<figcaption class=\"note\">{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png_bytes(fig))}" alt="{esc(alt)}">{cap}</figure>'


def _format_cv(cv: pd.DataFrame) -> pd.DataFrame:
    out = cv.copy()
    if "rows" in out.columns:
        out["rows"] = pd.to_numeric(out["rows"], errors="coerce").astype("Int64")
    return out


def _leaks_section(cfg: Config) -> str:
    """The strongest suspected duplicate pairs across folds (leaks.csv from `make ensemble`), when any."""
    path = cfg.exp_dir / "leaks.csv"
    pairs = read_table(path) if path.is_file() else pd.DataFrame()
    if pairs.empty:
        return ""
    pairs["similarity"] = pd.to_numeric(pairs["similarity"])
    return (f'<div class="warn"><b>Possible validation leakage:</b> {len(pairs)} suspected duplicate pair(s) '
            "across folds (leaks.csv); the CV rows 'OOF rows with a cross-fold near-duplicate' against "
            "'OOF rows without one' show what they cost. Fix: data.group_column, or folds.auto_groups: true.</div>"
            + _figure(pairs_figure(pairs), "suspected duplicate pairs across folds", "Strongest pairs first."))


def _ensemble_record(cfg: Config) -> dict:
    path = cfg.exp_dir / "ensemble.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _items_html(items: list[tuple[str, str]]) -> str:
    """The summary's (label, text) pairs: a list, each warning in its own box."""
    rest = "".join(f"<li><b>{esc(label)}</b>: {esc(text)}</li>" for label, text in items if label != "Warning")
    warned = "".join(f'<div class="warn"><b>Warning</b>: {esc(text)}</div>' for label, text in items
                     if label == "Warning")
    return f'<ul class="summary">{rest}</ul>{warned}'


def summary_section(cfg: Config, record: dict) -> str:
    """What the submission is, its out-of-fold estimate with the folds' spread, what was not applied and why,
    warnings (ensemble.json); its held-back score when `make score` ran; then the chain's steps."""
    if "submission" not in record:
        return ('<h2 id="summary">Summary</h2><p class="note">ensemble.json predates the chain\'s record: '
                "rerun `make ensemble` for the summary.</p>")
    items = summary_items(record)
    scored = cfg.exp_dir / "score.csv"
    if scored.is_file():
        held = score_items(record, pd.read_csv(scored), cfg.competition.metric)
        items = [("Held-back score", held[0][1].split(":", 1)[0])] + items + held[2:]
    return ('<h2 id="summary">Summary</h2>' + _items_html(items)
            + html_table(steps_frame(record), caption="The chain: each step's nested gain ± noise, applied or not"))


def _cv_tables(cv: pd.DataFrame, record: dict) -> str:
    """The CV table without the rows that carry nothing here, which follow folded."""
    folded = folded_rows(cv, record) if record else {}
    hidden = {part for parts in folded.values() for part in parts}
    out = html_table(cv[~cv["part"].isin(hidden)])
    for why, parts in folded.items():
        out += (f"<details><summary>{len(parts)} rows folded: {esc(why)}</summary>"
                + html_table(cv[cv["part"].isin(parts)]) + "</details>")
    return out


def write_report(cfg: Config, log=print) -> Path:
    """Write ``outputs/<exp>/report.html`` (self-contained); returns its path."""
    paths = report_inputs(cfg)
    oof_path = paths.get("oof_tta", paths["oof"])
    oof = read_table(oof_path)
    classes = report_classes(cfg, oof)
    prob_cols = prob_columns(classes)
    missing = [c for c in prob_cols if c not in oof.columns]
    if missing:
        raise ValueError(f"{oof_path}: columns {missing[:5]} missing for classes {classes}; "
                         "the outputs come from different runs: rerun `make ensemble`")
    fold_metrics = [pd.read_csv(paths[f"metrics_{k}"]) for k in range(cfg.folds.n_splits)]
    sections: list[str] = []

    # The answer first: what the submission is and what it is expected to score; then the CV table.
    cv = _format_cv(pd.read_csv(paths["cv"]))
    record = _ensemble_record(cfg)
    sections.append(summary_section(cfg, record))
    sections.append('<h2 id="cv">Cross-validation</h2>'
                    + f'<p class="note">Competition metric: {esc(cfg.competition.metric)}.</p>' + _cv_tables(cv, record)
                    + _leaks_section(cfg))

    # Learning curves
    summary = _fold_summary(cfg, fold_metrics, classes)
    sections.append('<h2 id="curves">Learning curves</h2>'
                    + html_table(summary, caption=f"At each fold's best epoch by {cfg.train.monitor}")
                    + _figure(learning_curve_figure(cfg, fold_metrics, classes), "per-fold learning curves"))

    # Out-of-fold confusion matrix and per-class F1
    y_true = class_ids(oof["label"], classes, str(oof_path))
    probs = oof[prob_cols].to_numpy(dtype=float)
    source = ("TTA-merged, " + cfg.tta.merge) if oof_path.name == "oof_tta.csv" else "no TTA"
    f1_fig, f1_table = per_class_f1_figure(y_true, probs, classes)
    sections.append(f'<h2 id="oof">Out-of-fold predictions</h2><p class="note">{len(oof)} validation rows '
                    f"from {esc(oof_path.name)} ({esc(source)}).</p>"
                    + _figure(confusion_figure(y_true, probs, classes, source), "out-of-fold confusion matrix",
                              "Each row sums to 1: the share of a true class predicted as each class.")
                    + _figure(f1_fig, "per-class F1") + html_table(f1_table))

    # Test distribution
    sub = read_text_csv(paths["submission"])
    fmt = format_for_config(cfg, read_text_csv(cfg.data.sample_submission), classes)
    needed = [cfg.data.target_column] if fmt.kind != "class_probabilities" else list(fmt.classes)
    if not set(needed) <= set(sub.columns):
        raise ValueError(f"{paths['submission']}: no column(s) {sorted(set(needed) - set(sub.columns))[:5]} "
                         f"for its {fmt.kind} format; rerun `make ensemble`")
    predicted = labels_of(sub, fmt, cfg.data.target_column)
    dist = prediction_distribution_table(_training_labels(cfg, oof), predicted, classes)
    sections.append('<h2 id="test">Predicted test class distribution</h2>'
                    + _figure(_test_distribution_figure(dist), "predicted test classes vs training prior",
                              "A class predicted far more or less often than its training share hints at a "
                              "prior shift between training and test data, or at a biased model.")
                    + html_table(dist, float_format="{:.3f}"))
    priors = prior_shift_section(cfg, classes)
    sections.append(priors)

    # Configuration (and the package versions of the run, when the resolver saved them)
    versions = ""
    if (cfg.exp_dir / "versions.json").is_file():
        try:
            found = json.loads((cfg.exp_dir / "versions.json").read_text())
            versions = html_table(pd.DataFrame({"package": list(found), "version": [str(v) for v in found.values()]}),
                                  caption="Package versions")
        except ValueError:
            pass
    sections.append('<h2 id="config">Resolved configuration</h2>' + versions
                    + f"<pre>{esc(paths['config'].read_text())}</pre>")

    nav = "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in [
        ("summary", "summary"), ("cv", "cross-validation"), ("curves", "learning curves"), ("oof", "out-of-fold"),
        ("test", "test predictions"), *([("prior", "priors")] if priors else []), ("config", "config")]) + "</nav>"
    page = html_page(f"Experiment report: {cfg.experiment}", nav + "\n".join(sections), self_contained=True)
    out = cfg.exp_dir / "report.html"
    write_text_atomic(out, page)
    log(f"[report] {out}")
    return out
