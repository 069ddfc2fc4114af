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
    near_duplicates.csv / near_duplicates.png        near-identical images in DIFFERENT folds:
                                                     validation leakage

Near duplicates: every image gets a 64-bit average hash (8x8 grey thumbnail, one bit per
pixel: brighter than the mean or not); two images whose hashes differ in at most
``report.near_duplicate_distance`` bits are near duplicates. Up to :data:`EXACT_LIMIT`
images every pair is compared (numpy XOR + popcount, in blocks); above that, the
pigeonhole principle keeps it exact without comparing every pair: split the 64 bits
into ``distance + 1`` chunks, and any two hashes within ``distance`` bits agree exactly
on at least one chunk, so only images sharing a chunk value are compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.config import Config
from pipeline.fileio import write_csv_atomic, write_text_atomic
from pipeline.report.plots import bar_chart, esc, html_page, html_table, new_figure, save_png

__all__ = ["write_eda", "class_counts", "fold_class_table", "sampling_table",
           "scan_images", "size_mode_table", "average_hash", "hash_distances", "near_duplicate_pairs",
           "NearDuplicates", "cross_fold_duplicates", "EXACT_LIMIT", "MAX_PAIRS"]

# Up to this many images, every pair of hashes is compared; above, chunk buckets (still exact).
EXACT_LIMIT = 5000
# Near-duplicate pairs kept (the rest are counted); the HTML lists fewer.
MAX_PAIRS = 100_000
_HTML_PAIRS = 50
_FIGURE_PAIRS = 8
# The sample grid shows at most this many classes (rows).
_GRID_CLASSES = 40
_BLOCK = 512
_HASH_SIZE = 8


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


# ---- image headers and hashes ---------------------------------------------------------------------

def average_hash(img: Image.Image, size: int = _HASH_SIZE) -> np.ndarray:
    """The `size*size` bits of an image's average hash (grey thumbnail pixel > its mean)."""
    img.draft("L", (size * 4, size * 4))  # JPEG: decode at a reduced scale; other formats ignore it
    small = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return (small > small.mean()).ravel()


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans → (n,) uint64."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").ravel().astype(np.uint64)


def scan_images(paths, mode: str = "off", hashes: bool = True) -> pd.DataFrame:
    """Per image: width, height, mode (from the header, pixels not decoded), hash (uint64), ok.

    Unreadable images get ok=False, mode "unreadable" and no hash (they are never near duplicates).
    """
    from pipeline.progress import progress

    paths = list(paths)
    widths = np.zeros(len(paths), dtype=np.int64)
    heights = np.zeros(len(paths), dtype=np.int64)
    modes = []
    ok = np.zeros(len(paths), dtype=bool)
    bits = np.zeros((len(paths), _HASH_SIZE * _HASH_SIZE), dtype=bool)
    for i, path in enumerate(progress(paths, len(paths), "[eda] reading images", mode=mode)):
        try:
            with Image.open(path) as img:
                widths[i], heights[i] = img.size
                modes.append(img.mode)
                if hashes:
                    bits[i] = average_hash(img)
            ok[i] = True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            modes.append("unreadable")
    frame = pd.DataFrame({"width": widths, "height": heights, "mode": modes, "ok": ok})
    frame["hash"] = _pack(bits) if len(paths) else np.zeros(0, dtype=np.uint64)
    return frame


def size_mode_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Counts of each (width, height, mode), most common first."""
    table = (stats.groupby(["width", "height", "mode"]).size().rename("images").reset_index()
             .sort_values(["images", "width", "height"], ascending=[False, True, True], kind="stable"))
    table["share"] = table["images"] / max(len(stats), 1)
    return table.reset_index(drop=True)


# ---- near duplicates ------------------------------------------------------------------------------

def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1).astype(np.int64)


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between every hash of `a` (rows) and of `b` (columns)."""
    return _popcount(np.asarray(a, dtype=np.uint64)[:, None] ^ np.asarray(b, dtype=np.uint64)[None, :])


@dataclass
class NearDuplicates:
    """Pairs (i < j, row positions) within the distance; only cross-fold ones when folds were given."""
    pairs: np.ndarray          # (m, 3) int64: i, j, distance; at most MAX_PAIRS rows
    total: int                 # pairs found (may exceed len(pairs))
    same_fold: int             # near-duplicate pairs inside one fold (counted, not kept)
    method: str                # "all pairs" or "chunk buckets"


class _Collector:
    def __init__(self, folds: np.ndarray | None, limit: int):
        self.folds, self.limit = folds, limit
        self.kept: list[np.ndarray] = []
        self.n_kept = self.total = self.same_fold = 0

    def add(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        if self.folds is not None:
            same = self.folds[i] == self.folds[j]
            self.same_fold += int(same.sum())
            i, j, d = i[~same], j[~same], d[~same]
        self.total += len(i)
        room = self.limit - self.n_kept
        if room > 0 and len(i):
            block = np.stack([i, j, d], axis=1)[:room].astype(np.int64)
            self.kept.append(block)
            self.n_kept += len(block)

    def result(self, method: str) -> NearDuplicates:
        pairs = np.concatenate(self.kept) if self.kept else np.zeros((0, 3), dtype=np.int64)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], pairs[:, 2])) if len(pairs) else np.zeros(0, int)
        return NearDuplicates(pairs[order], self.total, self.same_fold, method)


def _all_pairs(hashes: np.ndarray, index: np.ndarray, max_distance: int, out: _Collector,
               accept=None) -> None:
    """Compare every pair among hashes[index] in blocks; report pairs (i < j) within the distance."""
    h = hashes[index]
    n = len(index)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        d = hash_distances(h[start:stop], h[start:])           # columns: start .. n-1
        r, c = np.nonzero(d <= max_distance)
        c = c + start
        upper = c > r + start
        r, c = r[upper] + start, c[upper]
        if accept is not None:
            keep = accept(index[r], index[c])
            r, c = r[keep], c[keep]
        if len(r):
            out.add(index[r], index[c], d[r - start, c - start])


def _chunks(max_distance: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of `max_distance + 1` chunks covering the 64 bits as evenly as possible."""
    m = max_distance + 1
    widths = [bits // m + (1 if k < bits % m else 0) for k in range(m)]
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    return list(zip(shifts, widths))


def _bucketed_pairs(hashes: np.ndarray, index: np.ndarray, max_distance: int, out: _Collector) -> None:
    """Exact via the pigeonhole principle: pairs within d bits share one of d+1 chunks exactly.

    A pair is compared in every chunk it shares but reported only for the first one, so no
    pair is reported twice.
    """
    keys = [((hashes >> np.uint64(s)) & np.uint64((1 << w) - 1)) for s, w in _chunks(max_distance)]
    for c, key in enumerate(keys):
        def first_shared_chunk(i, j, earlier=keys[:c]):
            keep = np.ones(len(i), dtype=bool)
            for k in earlier:
                keep &= k[i] != k[j]
            return keep

        order = index[np.argsort(key[index], kind="stable")]
        sorted_keys = key[order]
        bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [len(order)]])
        big = stops - starts > 1
        for a, b in zip(starts[big], stops[big]):
            _all_pairs(hashes, np.sort(order[a:b]), max_distance, out, accept=first_shared_chunk)


def near_duplicate_pairs(hashes, max_distance: int, folds=None, valid=None, method: str = "auto",
                         limit: int = MAX_PAIRS) -> NearDuplicates:
    """Pairs of images whose 64-bit hashes differ in at most `max_distance` bits.

    With `folds`, only pairs in different folds are kept (same-fold ones are counted).
    `valid` (booleans) excludes images without a hash. `method`: "auto" (all pairs up to
    :data:`EXACT_LIMIT` images, chunk buckets above), "all" or "buckets"; all give the same pairs.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance <= 63:
        raise ValueError(f"report.near_duplicate_distance must be in 0..63 bits, got {max_distance}")
    out = _Collector(None if folds is None else np.asarray(folds), limit)
    index = np.arange(len(hashes)) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool))
    if method == "auto":
        method = "all" if len(index) <= EXACT_LIMIT else "buckets"
    if method == "all":
        _all_pairs(hashes, index, max_distance, out)
        return out.result("all pairs compared")
    if method == "buckets":
        _bucketed_pairs(hashes, index, max_distance, out)
        return out.result(f"pairs sharing one of {max_distance + 1} hash chunks compared (exact)")
    raise ValueError(f"method must be 'auto', 'all' or 'buckets', got {method!r}")


def cross_fold_duplicates(table: pd.DataFrame, stats: pd.DataFrame, max_distance: int,
                          method: str = "auto") -> tuple[pd.DataFrame, NearDuplicates]:
    """Near-duplicate pairs whose images sit in different folds, as a table for people."""
    found = near_duplicate_pairs(stats["hash"].to_numpy(), max_distance, folds=table["fold"].to_numpy(),
                                 valid=stats["ok"].to_numpy(), method=method)
    i, j, d = found.pairs.T if len(found.pairs) else (np.zeros(0, int),) * 3
    frame = pd.DataFrame({
        "row_a": i, "image_a": table["image"].to_numpy()[i], "fold_a": table["fold"].to_numpy()[i],
        "label_a": table["label"].to_numpy()[i],
        "row_b": j, "image_b": table["image"].to_numpy()[j], "fold_b": table["fold"].to_numpy()[j],
        "label_b": table["label"].to_numpy()[j], "distance": d})
    frame["same_label"] = frame["label_a"].astype(str) == frame["label_b"].astype(str)
    return frame, found


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


def _thumb(path: str, size: int = 96) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


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
                thumb = _thumb(images[picks[c][k]])
                if thumb is not None:
                    ax.imshow(thumb, interpolation="nearest")
                else:
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            if k == 0:
                ax.set_ylabel(str(c), rotation=0, ha="right", va="center", fontsize=9)
    return save_png(fig, path)


def _fig_pairs(pairs: pd.DataFrame, path: Path) -> Path:
    shown = pairs.head(_FIGURE_PAIRS)
    fig = new_figure(4.6, 2.2 * len(shown) + 0.2)
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for r, row in enumerate(shown.itertuples(index=False)):
        for k, (img, fold, label) in enumerate([(row.image_a, row.fold_a, row.label_a),
                                                (row.image_b, row.fold_b, row.label_b)]):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            thumb = _thumb(img, 128)
            if thumb is not None:
                ax.imshow(thumb, interpolation="nearest")
            ax.set_title(f"{Path(img).name}\nfold {fold}, {label}", fontsize=7)
        axes[r, 0].set_ylabel(f"distance {row.distance}", fontsize=8)
    return save_png(fig, path)


# ---- the page ------------------------------------------------------------------------------------

def _img(name: str, alt: str) -> str:
    return f'<img src="{esc(name)}" alt="{esc(alt)}">'


def write_eda(cfg: Config, log=print) -> Path:
    """Write ``outputs/<exp>/eda/index.html`` and its figures and tables; returns the page's path."""
    from pipeline.data.tables import load_fold_table

    table = load_fold_table(cfg)
    out = cfg.exp_dir / "eda"
    out.mkdir(parents=True, exist_ok=True)
    classes = _classes(table["label"])
    n_folds = int(table["fold"].max()) + 1
    sections: list[str] = []

    # Overview
    group_folds = table.groupby("group")["fold"].nunique()
    group_labels = table.groupby("group")["label"].nunique()
    counts = class_counts(table["label"], classes)
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
    sections.append("<h2 id=\"overview\">Overview</h2>" + html_table(overview, float_format="{:g}")
                    + "".join(f"<p>{n}</p>" for n in notes))

    # Class distribution
    write_csv_atomic(out / "class_counts.csv", counts)
    _fig_class_distribution(counts, out / "class_distribution.png")
    sections.append("<h2 id=\"classes\">Class distribution</h2>" + _img("class_distribution.png", "images per class")
                    + html_table(counts, float_format="{:.3f}"))

    # Per fold
    per_fold = fold_class_table(table)
    write_csv_atomic(out / "fold_class_counts.csv", per_fold.rename_axis("class"), index=True)
    _fig_fold_classes(per_fold, out / "fold_classes.png")
    sections.append("<h2 id=\"folds\">Classes per validation fold</h2>"
                    + _img("fold_classes.png", "class shares per fold")
                    + html_table(per_fold.rename_axis("class"), index=True))

    # Sampling
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
    sections.append(f"<h2 id=\"sampling\">Training part of each fold: {esc(how)}</h2>"
                    + _img("sampling.png", "training counts before and after sampling")
                    + html_table(wide.rename_axis("class"), index=True, float_format="{:.1f}"))

    # Groups
    _fig_group_sizes(table, out / "group_sizes.png")
    sections.append("<h2 id=\"groups\">Images per group</h2>" + _img("group_sizes.png", "images per group"))

    # Image sizes and modes (+ hashes, in the same pass)
    log(f"[eda] reading {len(table)} image headers and average hashes")
    # A progress display only where the scan takes a while (a few thousand images take a second or two).
    stats = scan_images(table["image"].tolist(), mode=cfg.report.progress if len(table) > EXACT_LIMIT else "off")
    sizes = size_mode_table(stats)
    write_csv_atomic(out / "image_sizes.csv", sizes)
    bad = int((~stats["ok"]).sum())
    sections.append("<h2 id=\"sizes\">Image sizes and modes</h2>"
                    + (f'<div class="warn">{bad} image(s) could not be read.</div>' if bad else "")
                    + html_table(sizes, float_format="{:.3f}", max_rows=30))

    # Samples
    _fig_samples(table, classes, cfg.report.samples_per_class, cfg.seed, out / "samples.png")
    more = f" (first {_GRID_CLASSES} of {len(classes)} classes)" if len(classes) > _GRID_CLASSES else ""
    sections.append(f"<h2 id=\"samples\">Samples per class{more}</h2>" + _img("samples.png", "sample images"))

    # Near duplicates across folds
    d = cfg.report.near_duplicate_distance
    pairs, found = cross_fold_duplicates(table, stats, d)
    write_csv_atomic(out / "near_duplicates.csv", pairs)
    head = (f"<h2 id=\"duplicates\">Near-duplicate images across folds</h2><p class=\"note\">64-bit average "
            f"hashes within {d} bit(s); {found.method}; {found.same_fold} near-duplicate pair(s) inside one "
            "fold are not leakage and are not listed.</p>")
    if found.total:
        stored = "" if len(pairs) == found.total else f" ({len(pairs)} kept in near_duplicates.csv)"
        by_distance = pairs["distance"].value_counts().sort_index()
        spread = ", ".join(f"{int(k)} bit(s): {int(v)}" for k, v in by_distance.items())
        differ = int((~pairs["same_label"]).sum())
        _fig_pairs(pairs, out / "near_duplicates.png")
        body = (f'<div class="warn"><b>Possible validation leakage:</b> {found.total} pair(s) of near-identical '
                f"images sit in different folds{stored}. A model validated on one has trained on the other, "
                "which inflates validation scores. Give each pair one group (data.group_column) or drop "
                f"one image.</div><p>Pairs by hash distance: {spread}. {differ} pair(s) carry different labels "
                "(label noise, or images too small for a 64-bit hash to tell apart: lower "
                "report.near_duplicate_distance if the pairs below are not real duplicates).</p>"
                + _img("near_duplicates.png", "near-duplicate pairs")
                + html_table(pairs, max_rows=_HTML_PAIRS))
        log(f"[eda] warning: {found.total} near-duplicate pair(s) across folds (see {out / 'near_duplicates.csv'})")
    else:
        (out / "near_duplicates.png").unlink(missing_ok=True)
        body = '<div class="ok">No near-duplicate images in different folds.</div>'
    sections.append(head + body)

    nav = "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in [
        ("overview", "overview"), ("classes", "classes"), ("folds", "folds"), ("sampling", "sampling"),
        ("groups", "groups"), ("sizes", "sizes"), ("samples", "samples"), ("duplicates", "duplicates")]) + "</nav>"
    page = html_page(f"EDA: {cfg.experiment}", nav + "\n".join(sections))
    index = out / "index.html"
    write_text_atomic(index, page)
    log(f"[eda] {index}")
    return index
