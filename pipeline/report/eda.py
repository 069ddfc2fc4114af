"""Exploratory data analysis of the training set and its folds → ``outputs/<exp>/eda/``.

`write_eda(cfg)` needs only the train CSV, the images and the folds file (so it runs before
any training) and writes, beside ``index.html`` (written last: it is the Make target):

    class_distribution.png / class_counts.csv        images per class, whole training set
    fold_classes.png / fold_class_counts.csv         validation images per class and fold
    sampling.png / sampling.csv                      each fold's training part before and after
                                                     sampling.method (oversample: the exact counts
                                                     the trainer draws; balanced: the expected ones)
    group_sizes.png                                  histogram of images per group
    image_sizes.csv                                  (width, height, mode) combinations, read from
                                                     the image headers without decoding pixels
    samples.png                                      report.samples_per_class images of each class
    leaks.csv / leaks.png                            suspected duplicates in DIFFERENT folds:
                                                     validation leakage (pipeline.data.leaks)
    near_duplicates.csv                              average-hash pairs across folds (information)

Suspected duplicates are outliers of the same-class cross-fold similarities
(:mod:`pipeline.data.leaks`); the average hashes (:mod:`pipeline.report.near_duplicates`, pairs within
``report.near_duplicate_distance`` bits) are listed, not warned about.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.leak_scan import leak_pairs_table, probe_note, scan_and_probe
from pipeline.fileio import write_csv_atomic, write_text_atomic
from pipeline.report.near_duplicates import EXACT_LIMIT, cross_fold_duplicates, scan_images
from pipeline.report.pairs import image_thumb, pairs_figure
from pipeline.report.plots import bar_chart, esc, html_page, html_table, new_figure, save_png

__all__ = ["write_eda", "class_counts", "fold_class_table", "sampling_table", "size_mode_table"]

# Near-duplicate pairs listed in the HTML table and shown in the figure.
_HTML_PAIRS = 50
_FIGURE_PAIRS = 8
# The sample grid shows at most this many classes (rows).
_GRID_CLASSES = 40


# ---- the table ------------------------------------------------------------------------------------

def _classes(labels) -> list:
    from pipeline.data.tables import class_list
    return class_list(labels)


def class_counts(labels, classes: list | None = None) -> pd.DataFrame:
    """Images per class (sorted classes): columns class, images, share."""
    labels = pd.Series(labels)
    classes = classes if classes is not None else _classes(labels)
    counts = labels.value_counts().reindex(classes, fill_value=0).astype(np.int64)
    return pd.DataFrame({"class": classes, "images": counts.to_numpy(),
                         "share": counts.to_numpy() / max(len(labels), 1)})


def fold_class_table(table: pd.DataFrame) -> pd.DataFrame:
    """Validation images per class (rows, sorted) and fold (columns fold_0 .. fold_{K-1}, total)."""
    from pipeline.data.folds import fold_class_counts
    return fold_class_counts(table["label"].to_numpy(), table["fold"].to_numpy())


def sampling_table(labels, folds, method: str, target_ratio: float, seed: int) -> pd.DataFrame:
    """Each fold's training part per class, before and after the sampling the trainer applies.

    Columns fold, class, before, after. ``oversample``: `after` counts the rows
    :func:`pipeline.data.sampling.epoch_rows` returns with the trainer's first-epoch seed (the counts
    do not depend on the seed, only which rows repeat).
    ``balanced``: the expected draws of the weighted sampler, ``n_train / n_classes`` per class
    present. ``none``: unchanged.
    """
    from pipeline.data.sampling import epoch_rows, epoch_seed

    labels = np.asarray(labels)
    folds = np.asarray(folds)
    classes = _classes(labels)
    rows = []
    for k in sorted(np.unique(folds).tolist()):
        train = labels[folds != k]
        before = pd.Series(train).value_counts().reindex(classes, fill_value=0)
        if method == "oversample":
            drawn = train[epoch_rows(train, method, target_ratio, epoch_seed(seed, 0))]
            after = pd.Series(drawn).value_counts().reindex(classes, fill_value=0).astype(float)
        elif method == "balanced":
            present = (before > 0).sum()
            after = (before > 0).astype(float) * (len(train) / max(present, 1))
        else:
            after = before.astype(float)
        for c in classes:
            rows.append({"fold": int(k), "class": c, "before": int(before[c]), "after": float(after[c])})
    return pd.DataFrame(rows)



def size_mode_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Counts of each (width, height, mode), most common first."""
    table = (stats.groupby(["width", "height", "mode"]).size().rename("images").reset_index()
             .sort_values(["images", "width", "height"], ascending=[False, True, True], kind="stable"))
    table["share"] = table["images"] / max(len(stats), 1)
    return table.reset_index(drop=True)


# ---- figures --------------------------------------------------------------------------------------

def _fig_class_distribution(counts: pd.DataFrame, path: Path) -> Path:
    fig = new_figure(max(6, 0.45 * len(counts) + 2), 4)
    ax = fig.subplots()
    bar_chart(ax, counts["class"].tolist(), {"images": counts["images"]}, ylabel="images",
              title=f"Images per class ({int(counts['images'].sum())} in all)", annotate=True)
    return save_png(fig, path)


def _fig_fold_classes(per_fold: pd.DataFrame, path: Path) -> Path:
    folds = [c for c in per_fold.columns if c.startswith("fold_")]
    fig = new_figure(max(7, 0.3 * len(per_fold) * max(len(folds), 1) / 2 + 3), 4)
    ax = fig.subplots()
    # Share of each class within each fold: stratification shows as equal bars.
    shares = {f.replace("fold_", "fold "): per_fold[f] / max(per_fold[f].sum(), 1) for f in folds}
    bar_chart(ax, per_fold.index.tolist(), shares, ylabel="share of the fold's validation images",
              title="Class shares per validation fold")
    return save_png(fig, path)


def _fig_sampling(sampling: pd.DataFrame, method: str, path: Path) -> Path:
    folds = sorted(sampling["fold"].unique())
    cols = min(3, len(folds))
    rows = -(-len(folds) // cols)
    n_classes = sampling["class"].nunique()
    fig = new_figure(cols * max(4, 0.35 * n_classes + 1.5), rows * 3.2)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    label = {"oversample": "after oversampling", "balanced": "expected draws (balanced)",
             "none": "after (no sampling)"}[method]
    for ax, k in zip(axes, folds):
        part = sampling[sampling["fold"] == k]
        bar_chart(ax, part["class"].tolist(), {"before": part["before"], label: part["after"]},
                  ylabel="training images", title=f"fold {k}: training part")
    for ax in axes[len(folds):]:
        ax.set_visible(False)
    return save_png(fig, path)


def _fig_group_sizes(table: pd.DataFrame, path: Path) -> Path:
    sizes = table.groupby("group").size()
    fig = new_figure(6, 3.5)
    ax = fig.subplots()
    counts = sizes.value_counts().sort_index()
    if len(counts) <= 40:
        sizes_seen = counts.index.astype(int).to_numpy()
        ax.bar(sizes_seen, counts.to_numpy(), width=0.8)
        ax.set_xticks(sizes_seen if len(sizes_seen) <= 20 else ax.get_xticks())
        ax.set_xlim(sizes_seen.min() - 1, sizes_seen.max() + 1)
    else:
        ax.hist(sizes.to_numpy(), bins=40)
    ax.set_xlabel("images in the group")
    ax.set_ylabel("groups")
    ax.set_title(f"Images per group ({len(sizes)} groups)")
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def _pick_samples(table: pd.DataFrame, classes: list, per_class: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    picks = {}
    for c in classes:
        rows = np.flatnonzero(table["label"].astype(str).to_numpy() == str(c))
        picks[c] = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)) if len(rows) else rows
    return picks


def _fig_samples(table: pd.DataFrame, classes: list, per_class: int, seed: int, path: Path) -> Path:
    shown = classes[:_GRID_CLASSES]
    picks = _pick_samples(table, shown, per_class, seed)
    cols = max(per_class, 1)
    fig = new_figure(1.1 * cols + 1.2, 1.1 * len(shown) + 0.3)
    axes = fig.subplots(len(shown), cols, squeeze=False)
    images = table["image"].to_numpy()
    for r, c in enumerate(shown):
        for k in range(cols):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if k < len(picks[c]):
                thumb = image_thumb(images[picks[c][k]])
                if thumb is not None:
                    ax.imshow(thumb, interpolation="nearest")
                else:
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            if k == 0:
                ax.set_ylabel(str(c), rotation=0, ha="right", va="center", fontsize=9)
    return save_png(fig, path)


# ---- the page ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _timed(log, what: str, n_images: int):
    """Log how long the block took and its throughput: what an EDA at scale spends its time on."""
    tick = time.perf_counter()
    yield
    seconds = time.perf_counter() - tick
    log(f"[eda] {what}: {seconds:.1f} s ({n_images / max(seconds, 1e-9):.0f} images/s)")


def _img(name: str, alt: str) -> str:
    return f'<img src="{esc(name)}" alt="{esc(alt)}">'


def write_eda(cfg: Config, log=print) -> Path:
    """Write ``outputs/<exp>/eda/index.html`` and its figures and tables; returns the page's path.

    Broken images are refused first, by the data check's verdicts (an image unchanged since the last
    check is not decoded again). The page then opens each image once for its header and average hash
    (in worker processes), the leak scan once more (:mod:`pipeline.data.leak_scan`), and the sample
    grid a few; each step's time is logged.
    """
    from pipeline.data.check import require_train_images
    from pipeline.data.tables import load_fold_table

    table = load_fold_table(cfg)
    require_train_images(cfg)
    out = cfg.exp_dir / "eda"
    out.mkdir(parents=True, exist_ok=True)
    classes = _classes(table["label"])
    counts = class_counts(table["label"], classes)
    sections = [_overview_section(cfg, table, classes, counts),
                _class_section(out, counts),
                _fold_section(out, table),
                _sampling_section(cfg, out, table),
                _group_section(out, table)]
    log(f"[eda] reading {len(table)} image headers and average hashes")
    # A progress display only where the scan takes a while (a few thousand images take a second or two).
    with _timed(log, "image headers and average hashes", len(table)):
        stats = scan_images(table["image"].tolist(), mode=cfg.report.progress if len(table) > EXACT_LIMIT else "off",
                            n_jobs=-1)
    sections.append(_sizes_section(out, stats))
    sections.append(_samples_section(cfg, out, table, classes))
    sections.append(_duplicates_section(cfg, out, table, stats, log))

    nav = "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in [
        ("overview", "overview"), ("classes", "classes"), ("folds", "folds"), ("sampling", "sampling"),
        ("groups", "groups"), ("sizes", "sizes"), ("samples", "samples"), ("duplicates", "duplicates")]) + "</nav>"
    page = html_page(f"EDA: {cfg.experiment}", nav + "\n".join(sections))
    index = out / "index.html"
    write_text_atomic(index, page)
    log(f"[eda] {index}")
    return index


def _overview_section(cfg: Config, table: pd.DataFrame, classes: list, counts: pd.DataFrame) -> str:
    """Counts of images, classes, groups and folds, and notes on groups that span folds or labels."""
    group_folds = table.groupby("group")["fold"].nunique()
    group_labels = table.groupby("group")["label"].nunique()
    n_folds = int(table["fold"].max()) + 1
    ratio = counts["images"].max() / max(counts["images"][counts["images"] > 0].min(), 1)
    overview = pd.DataFrame({"": ["training images", "classes", "groups", "folds",
                                  "largest / smallest class", "sampling.method"],
                             "value": [len(table), len(classes), table["group"].nunique(), n_folds,
                                       f"{ratio:.1f}x", cfg.sampling.method]})
    notes = []
    if not cfg.data.group_column:
        notes.append("No data.group_column: every image is its own group.")
    if (group_folds > 1).any():
        notes.append(f'<div class="warn">{int((group_folds > 1).sum())} group(s) span more than one fold.</div>')
    if (group_labels > 1).any():
        notes.append(f"{int((group_labels > 1).sum())} group(s) hold more than one label.")
    return ("<h2 id=\"overview\">Overview</h2>" + html_table(overview, float_format="{:g}")
            + "".join(f"<p>{n}</p>" for n in notes))


def _class_section(out: Path, counts: pd.DataFrame) -> str:
    write_csv_atomic(out / "class_counts.csv", counts)
    _fig_class_distribution(counts, out / "class_distribution.png")
    return ("<h2 id=\"classes\">Class distribution</h2>" + _img("class_distribution.png", "images per class")
            + html_table(counts, float_format="{:.3f}"))


def _fold_section(out: Path, table: pd.DataFrame) -> str:
    per_fold = fold_class_table(table)
    write_csv_atomic(out / "fold_class_counts.csv", per_fold.rename_axis("class"), index=True)
    _fig_fold_classes(per_fold, out / "fold_classes.png")
    return ("<h2 id=\"folds\">Classes per validation fold</h2>"
            + _img("fold_classes.png", "class shares per fold")
            + html_table(per_fold.rename_axis("class"), index=True))


def _sampling_section(cfg: Config, out: Path, table: pd.DataFrame) -> str:
    """Each fold's training part before and after sampling: CSV, figure and a wide table."""
    sampling = sampling_table(table["label"].to_numpy(), table["fold"].to_numpy(), cfg.sampling.method,
                              cfg.sampling.target_ratio, cfg.seed)
    write_csv_atomic(out / "sampling.csv", sampling)
    _fig_sampling(sampling, cfg.sampling.method, out / "sampling.png")
    wide = sampling.pivot(index="class", columns="fold", values=["before", "after"])
    wide.columns = [f"fold {k} {what}" for what, k in wide.columns]
    wide = wide[[f"fold {k} {w}" for k in sorted(sampling["fold"].unique()) for w in ("before", "after")]]
    for col in wide.columns:  # whole numbers print as such; expected (balanced) draws keep a decimal
        if np.allclose(wide[col], np.round(wide[col])):
            wide[col] = wide[col].round().astype(np.int64)
    how = {"oversample": f"random oversampling to at least {cfg.sampling.target_ratio:g} x the largest class "
                         "(exact counts of the first epoch)",
           "balanced": "class-balanced weighted sampling (expected draws per epoch)",
           "none": "no resampling"}[cfg.sampling.method]
    return (f"<h2 id=\"sampling\">Training part of each fold: {esc(how)}</h2>"
            + _img("sampling.png", "training counts before and after sampling")
            + html_table(wide.rename_axis("class"), index=True, float_format="{:.1f}"))


def _group_section(out: Path, table: pd.DataFrame) -> str:
    _fig_group_sizes(table, out / "group_sizes.png")
    return "<h2 id=\"groups\">Images per group</h2>" + _img("group_sizes.png", "images per group")


def _sizes_section(out: Path, stats: pd.DataFrame) -> str:
    sizes = size_mode_table(stats)
    write_csv_atomic(out / "image_sizes.csv", sizes)
    bad = int((~stats["ok"]).sum())
    return ("<h2 id=\"sizes\">Image sizes and modes</h2>"
            + (f'<div class="warn">{bad} image(s) could not be read.</div>' if bad else "")
            + html_table(sizes, float_format="{:.3f}", max_rows=30))


def _samples_section(cfg: Config, out: Path, table: pd.DataFrame, classes: list) -> str:
    _fig_samples(table, classes, cfg.report.samples_per_class, cfg.seed, out / "samples.png")
    more = f" (first {_GRID_CLASSES} of {len(classes)} classes)" if len(classes) > _GRID_CLASSES else ""
    return f"<h2 id=\"samples\">Samples per class{more}</h2>" + _img("samples.png", "sample images")


def _duplicates_section(cfg: Config, out: Path, table: pd.DataFrame, stats: pd.DataFrame, log) -> str:
    """Suspected duplicates across folds (the leak detector): CSV, figure and a warning, or a note that there
    are none; below it the average-hash pairs, a cheap listing that is no warning (look-alikes pass it too)."""
    with _timed(log, "leak scan", len(table)):
        scan, probe = scan_and_probe(cfg, table, table["fold"].to_numpy())
    pairs = leak_pairs_table(table, scan.pairs)
    write_csv_atomic(out / "leaks.csv", pairs)
    head = (f"<h2 id=\"duplicates\">Near-duplicate images across folds</h2><p class=\"note\">{esc(scan.describe())}. "
            "Each image is compared with its nearest same-class look-alikes after aligning them; a pair is flagged "
            "only when it is far closer than either image's look-alikes (folds.leak_ratio).</p>")
    if len(pairs):
        rows = len(np.unique(pairs[["row_a", "row_b"]].to_numpy()))
        save_png(pairs_figure(pairs, _FIGURE_PAIRS), out / "leaks.png")
        head += (f'<div class="warn"><b>Possible validation leakage:</b> {len(pairs)} suspected duplicate '
                 f"pair(s) sit in different folds ({rows} of {len(table)} images). A model validated on one has "
                 f"trained on the other, which inflates validation scores. {esc(probe_note(probe))} If the pairs "
                 "below are one subject, give "
                 "them one group (data.group_column) or set folds.auto_groups: true, then `make folds`.</div>"
                 + _img("leaks.png", "suspected duplicate pairs") + html_table(pairs, max_rows=_HTML_PAIRS))
        log(f"[eda] warning: {len(pairs)} suspected near-duplicate pair(s) across folds, {rows} of {len(table)} "
            f"images affected (see {out / 'leaks.csv'}). {probe_note(probe)}")
    else:
        (out / "leaks.png").unlink(missing_ok=True)
        head += '<div class="ok">No suspected duplicate images in different folds.</div>'
    with _timed(log, "average-hash pairs", len(table)):
        return head + _hash_note(cfg, out, table, stats)


def _hash_note(cfg: Config, out: Path, table: pd.DataFrame, stats: pd.DataFrame) -> str:
    """The 64-bit average-hash pairs across folds, listed in near_duplicates.csv: information, not a warning."""
    d = cfg.report.near_duplicate_distance
    hashed, found = cross_fold_duplicates(table, stats, d)
    write_csv_atomic(out / "near_duplicates.csv", hashed)
    count = f"{found.total}" if found.complete else f"at least {found.total}"
    return (f"<p class=\"note\">Average hashes (64-bit) within {d} bit(s) across folds: {count} pair(s) "
            f"(near_duplicates.csv; {found.method}). Similar images of one class pass this test too, so it "
            "decides nothing; the check above does.</p>")
