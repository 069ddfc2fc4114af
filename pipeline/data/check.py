"""Check the competition's CSVs and images before any work starts, and report every problem at once.

A competitor runs the pipeline overnight on data they did not make. A blank label,
a truncated JPEG or a class too small for the folds should stop the run in the first
seconds with a list of everything that is wrong -- not one error at a time, and not in
epoch 3. ``check_data(cfg)`` reads what the config points at and returns a
:class:`DataReport`:

* **CSVs** (train CSV and sample submission): missing file, zero bytes or header only,
  unparsable, a configured column missing (with a "did you mean").
* **Train rows**: blank labels (label, stratify and true-label columns), blank group ids,
  blank image paths, the same image listed twice, a path escaping the image root
  (``../x.png``, absolute: reported and never opened).
* **Folds**: a class with fewer rows (groups, when grouped) than ``folds.n_splits``, a
  group carrying two labels, and finally :func:`pipeline.data.folds.assign_folds` itself, so
  a passing check means the folds stage will pass.
* **Test rows**: blank or duplicate ids, ids with no image; with a
  ``data.test_image_template``, images in the test folder that no id refers to
  (a warning) and a template that matches none of the ids.
* **Images**, each referenced file decoded once: missing, not a file, unreadable,
  not an image (random bytes), truncated or corrupt, too large; pixel modes that
  :func:`pipeline.data.transforms.load_rgb` converts safely (L, LA, 1, P, PA, RGBA, CMYK, ...: a
  warning per mode saying how many) or wrongly (16-bit ``I;16``/``I``, float ``F``: a
  problem per image); multi-frame files and EXIF orientation tags (warnings).

Nothing is written: the check only reads. The table checks live in
:mod:`pipeline.data.table_check`, the decoding (its cost, its worker processes) in
:mod:`pipeline.data.image_check`; this module holds the report and the image problems.

Call it from the CLI (``python -m pipeline check``) and at the start of the folds stage::

    report = check_data(cfg)
    report.raise_if_failed()      # DataError carrying report.format()
    print(report.format())        # the summary and any warnings
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.bit_depth import is_high_bit_depth, scales
from pipeline.data.image_check import ImageResult
from pipeline.data.layouts import IMAGE_EXTENSIONS   # the files counted as images when a folder is listed
from pipeline.data.table_check import ImageRef, check_test, check_train
from pipeline.data.verdicts import Verdicts

# Heavy imports (pandas, scikit-learn via pipeline.data.folds, torch via pipeline.data.transforms) happen
# inside the functions that need them: `python -m pipeline check` and the worker processes of
# pipeline.data.image_check must not spend seconds importing torch.

__all__ = ["check_data", "check_train_images", "require_train_images", "DataReport", "Problem"]

# Lines shown per kind of problem in `DataReport.format()` before "... and N more".
_MAX_SHOWN = 10
# PIL modes that `load_rgb`'s `convert("RGB")` turns into a faithful RGB image.
_SAFE_MODES = {
    "1": "1-bit black and white",
    "L": "8-bit grayscale (copied into R, G and B)",
    "LA": "grayscale with alpha (alpha dropped)",
    "La": "grayscale with premultiplied alpha (alpha dropped)",
    "P": "palette (expanded to RGB)",
    "PA": "palette with alpha (alpha dropped)",
    "RGBA": "RGB with alpha (alpha dropped: transparent pixels show whatever colour they store)",
    "RGBa": "RGB with premultiplied alpha (alpha dropped)",
    "RGBX": "RGB with padding",
    "CMYK": "CMYK (naive conversion without a colour profile: colours may shift)",
    "YCbCr": "YCbCr (converted to RGB)",
}


# ----------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data (or, in `DataReport.warnings`, worth knowing).

    `file` is the file to fix (usually the CSV that references the image, so `row`
    can point at the line); `row` is the 1-based line number in that file counting the
    header (the first data row is line 2), or None when the problem is not one row's;
    `kind` is a short code such as "missing-image"; `message` says what is wrong and
    what to do; `image` is the image file concerned, if any.
    """

    file: str
    row: int | None
    kind: str
    message: str
    image: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file} line {self.row}" if self.row is not None else self.file

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class DataReport:
    """Everything `check_data` found: fatal `problems`, non-fatal `warnings`, and counts."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    images_checked: int = 0
    images_reused: int = 0     # of those, unchanged since an earlier check: its verdict reused, not decoded
    train_rows: int = 0
    test_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> Counter:
        """How many problems of each kind."""
        return Counter(p.kind for p in self.problems)

    def format(self, max_per_kind: int = _MAX_SHOWN) -> str:
        """A readable report: a summary line, then problems and warnings grouped by kind."""
        counts = (f"{self.train_rows} train rows, {self.test_rows} test rows, "
                  f"{self.images_checked} images checked")
        if self.images_reused:
            counts += f", {self.images_reused} of them unchanged since an earlier check and not decoded again"
        if self.ok:
            head = f"data check passed ({counts})"
            head += f" with {len(self.warnings)} warning(s)" if self.warnings else "; no problems"
        else:
            head = (f"data check failed: {len(self.problems)} problem(s), {len(self.warnings)} "
                    f"warning(s) ({counts}). Fix them all, then rerun `python -m pipeline check`.")
        lines = [head]
        for title, items in (("Problems", self.problems), ("Warnings", self.warnings)):
            if not items:
                continue
            lines.append(f"{title}:")
            by_kind: dict[str, list[Problem]] = defaultdict(list)
            for p in items:
                by_kind[p.kind].append(p)
            for kind, group in by_kind.items():
                lines.append(f"  [{kind}] x{len(group)}")
                lines.extend(f"    {p}" for p in group[:max_per_kind])
                if len(group) > max_per_kind:
                    lines.append(f"    ... and {len(group) - max_per_kind} more")
        return "\n".join(lines)

    def raise_if_failed(self) -> "DataReport":
        """Raise `pipeline.data.transforms.DataError` with the formatted report if there is any problem."""
        if not self.ok:
            from pipeline.data.tables import DataError
            raise DataError(self.format())
        return self


class CheckRun:
    """One run of the check: the report being filled and every image path the CSVs name.

    The table checks (:mod:`pipeline.data.table_check`) record problems and image references
    here; the image checks below decode what `refs` names.
    """

    def __init__(self, cfg, verdicts: Verdicts | None = None, dry_run_folds: bool = True):
        self.cfg = cfg
        self.verdicts = verdicts if verdicts is not None else Verdicts(None)
        self.dry_run_folds = dry_run_folds          # run the grouped fold assignment (table_check)
        self.d = cfg.data
        self.report = DataReport()
        self.refs: dict[str, list[ImageRef]] = {}   # normalised full path → who names it
        self.skipped_roots: set[str] = set()        # image roots that do not exist: not opened
        self.expected_test: set[str] = set()        # test images named through the template
        self.guards: dict = {}                      # image root → its tables.RootGuard

    def problem(self, file, row, kind, message, image=None) -> None:
        """Record a fatal problem."""
        self.report.problems.append(Problem(str(file), row, kind, message, image))

    def warn(self, file, row, kind, message, image=None) -> None:
        """Record a warning."""
        self.report.warnings.append(Problem(str(file), row, kind, message, image))


# ----------------------------------------------------------------------------------------
# The images the CSVs name


def _check_images(run: CheckRun, n_jobs: int) -> None:
    """Decode every referenced image once; report each broken or missing one, then summarise."""
    paths = [p for p in run.refs
             if not any(p.startswith(root + os.sep) or p == root for root in run.skipped_roots)]
    results, crash = run.verdicts.inspect(paths, n_jobs)
    if crash is not None:
        run.problem(run.d.image_root, None, "checker-crashed",
                    f"a worker died while decoding images ({crash}): some file crashes the image "
                    "decoder or exhausts memory. Find it by checking subsets of the images, or run "
                    "with fewer parallel jobs to see memory use.")
        return
    run.report.images_checked = len(paths)
    run.report.images_reused = run.verdicts.reused
    modes: dict[str, list[tuple[str, ImageRef]]] = defaultdict(list)
    multi, rotated, high_bit = [], [], []
    missing_test = 0
    sibling_cache: dict[str, dict[str, list[str]]] = {}
    for path, res in zip(paths, results):
        refs = run.refs[path]
        ref = refs[0]
        also = (" (also named on " + ", ".join(f"{Path(r.csv).name} line {r.row}" for r in refs[1:6])
                + (" ..." if len(refs) > 6 else "") + ")") if len(refs) > 1 else ""
        if res.status == "missing":
            missing_test += ref.test
            _report_missing(run, path, ref, also, sibling_cache)
            continue
        if res.status != "ok" or (is_high_bit_depth(res.mode) and not scales(run.d.high_bit_depth, res.mode)):
            _report_broken(run, path, res, ref, also)
            continue
        if is_high_bit_depth(res.mode):
            high_bit.append((path, ref, res.mode))
            continue
        if res.mode != "RGB":
            modes[res.mode].append((path, ref))
        if res.frames > 1:
            multi.append((path, ref, res.frames))
        if res.rotated:
            rotated.append((path, ref))
    _check_test_folder(run, missing_test)
    _warn_image_summary(run, modes, multi, rotated)
    if high_bit:
        _note_high_bit(run, high_bit)


def _note_high_bit(run: CheckRun, high_bit: list) -> None:
    """The scaling of the 16/32-bit images (data.high_bit_depth), with the window it uses: a warning to read."""
    from pipeline.data.bit_depth import scaling_for

    path, ref, mode = high_bit[0]
    try:
        scaling = scaling_for(run.cfg)
    except (OSError, ValueError) as exc:
        run.problem(ref.csv, ref.row, "high-bit-depth", f"the 16/32-bit images cannot be scaled: {exc}", image=path)
        return
    found = ", ".join(f"{m} x{n}" for m, n in Counter(m for _, _, m in high_bit).most_common())
    run.warn(ref.csv, ref.row, "high-bit-scaled",
             f"{len(high_bit)} image(s) are 16/32-bit ({found}; first: {path}): scaled to 8-bit by "
             f"{scaling.describe()}, for training and test alike.", image=path)


def _warn_image_summary(run: CheckRun, modes: dict, multi: list, rotated: list) -> None:
    """One warning per converted mode, for multi-frame and rotated files, and for train/test overlap."""
    for mode, items in sorted(modes.items(), key=lambda kv: -len(kv[1])):
        desc = _SAFE_MODES.get(mode, f"mode {mode} (PIL converts it)")
        path, ref = items[0]
        run.warn(ref.csv, ref.row, "mode-converted",
                 f"{len(items)} image(s) are mode {mode}: {desc}; load_rgb converts them to RGB. "
                 f"First: {path}. Nothing to do unless that conversion is not what you want.", image=path)
    if multi:
        path, ref, n = multi[0]
        run.warn(ref.csv, ref.row, "multi-frame", f"{len(multi)} image(s) hold several frames (e.g. "
                 f"{path}: {n}); only the first frame is used.", image=path)
    if rotated:
        path, ref = rotated[0]
        run.warn(ref.csv, ref.row, "exif-orientation",
                 f"{len(rotated)} image(s) carry an EXIF orientation tag (e.g. {path}); load_rgb decodes "
                 "the pixels as stored and ignores it, so these reach the model rotated or mirrored. "
                 "Harmless if train and test agree; otherwise re-save them upright "
                 "(PIL.ImageOps.exif_transpose).", image=path)
    shared = [p for p, refs in run.refs.items() if {r.test for r in refs} == {True, False}]
    if shared:
        ref = next(r for r in run.refs[shared[0]] if r.test)
        run.warn(ref.csv, ref.row, "train-test-overlap",
                 f"{len(shared)} image(s) are both training and test images (e.g. {shared[0]}); check "
                 "the paths: the test score of those is meaningless.", image=shared[0])


def _check_test_folder(run: CheckRun, missing_test: int) -> None:
    """With a template, compare the test folder's image files with the ids."""
    expected = run.expected_test
    if not expected:
        return
    csv, template = run.d.sample_submission, run.d.test_image_template
    folders = {os.path.dirname(p) for p in expected}
    train_images = {p for p, refs in run.refs.items() if any(not r.test for r in refs)}
    extra = []
    for folder in sorted(folders):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            full = os.path.normpath(os.path.join(folder, name))
            if full not in expected and full not in train_images and os.path.isfile(full):
                extra.append(full)
    extra.sort()
    if extra and missing_test == len(expected):
        example = os.path.basename(extra[0])
        run.problem(csv, None, "test-ids-mismatch",
                    f"none of the {len(expected)} ids has an image through data.test_image_template "
                    f"{template!r}, yet the test folder holds {len(extra)} image(s) such as {example!r}. "
                    "Make the template match the file names (do the ids already include the "
                    "extension? is the folder right?).")
        return
    for path in extra:
        run.warn(path, None, "extra-test-image",
                 f"image in the test folder that no id in {csv} refers to; it will not be predicted. "
                 "Fine if the competition ships extra files; otherwise the sample submission is "
                 "incomplete or data.test_image_template does not match the file names.", image=path)


def _report_missing(run: CheckRun, path: str, ref: ImageRef, also: str, cache) -> None:
    folder, name = os.path.split(path)
    if folder not in cache:
        stems: dict[str, list[str]] = defaultdict(list)
        try:
            for other in os.listdir(folder):
                stems[os.path.splitext(other)[0].lower()].append(other)
        except OSError:
            pass
        cache[folder] = stems
    twins = [n for n in cache[folder].get(os.path.splitext(name)[0].lower(), []) if n != name]
    hint = f" A file named {twins[0]!r} exists there: fix the extension or case." if twins else ""
    if not os.path.isdir(folder):
        hint = f" Its folder {folder} does not exist either."
    if ref.test:
        run.problem(ref.csv, ref.row, "missing-test-image",
                    f"no image for this test row: {path} does not exist{also}.{hint} Every id needs an "
                    "image: check data.test_image_template / data.test_path_column and data.test_root, "
                    "or re-download the test images.", image=path)
    else:
        run.problem(ref.csv, ref.row, "missing-image",
                    f"image {path} does not exist{also}.{hint} Fix the path (relative to "
                    "data.image_root) or drop the row.", image=path)


def _report_broken(run: CheckRun, path: str, res: ImageResult, ref: ImageRef, also: str) -> None:
    drop = "drop the row" if not ref.test else "replace the file (a test image cannot be dropped)"
    if res.status == "not-a-file":
        kind, text = "not-a-file", f"{path} is a directory, not an image file{also}. Fix the path or {drop}."
    elif res.status == "unreadable":
        kind, text = "unreadable-image", (f"{path} cannot be read ({res.detail}){also}. Fix the file "
                                          "permissions.")
    elif res.status == "not-an-image":
        kind, text = "corrupt-image", (f"{path} is not an image PIL can read ({res.detail}){also}: a "
                                       f"broken download or another file type. Re-download it or {drop}.")
    elif res.status == "too-large":
        kind, text = "image-too-large", (f"{path} is too large to decode safely ({res.detail}){also}. "
                                         f"Resize it or {drop}.")
    elif res.status == "corrupt":
        truncated = any(word in res.detail.lower() for word in ("truncated", "incomplete", "broken data stream"))
        kind = "truncated-image" if truncated else "corrupt-image"
        what = "is cut short" if truncated else "fails to decode"
        text = (f"{path} {what} ({res.detail}){also}; training would crash on it. Re-download it or "
                f"{drop}.")
    else:  # a readable image whose pixels load_rgb would convert wrongly
        kind = "high-bit-depth"
        if res.mode == "F":
            depth = ("32-bit float pixels: convert('RGB') truncates them to 0..255, so values in [0, 1] "
                     "all become black")
        else:
            depth = (f"16/32-bit integer pixels (mode {res.mode}): convert('RGB') clips every value above "
                     "255 to white")
        text = (f"{path} has {depth}{also}. Set data.high_bit_depth: percentile (scaled by the training "
                "images' 0.5th..99.5th percentiles, right for 12-bit data or images that use part of the range) "
                "or range (16-bit only: 0..65535 → 0..255), or convert the images to 8-bit yourself.")
    run.problem(ref.csv, ref.row, kind, text, image=path)


def check_data(cfg, n_jobs: int = -1, verdicts: Verdicts | None = None, dry_run_folds: bool = True) -> DataReport:
    """Check the train CSV, the sample submission and every image they name; report all problems.

    Parameters
    ----------
    cfg : pipeline.config.Config
        Reads `cfg.data` (CSVs, columns, roots, test template or path column),
        `cfg.folds.n_splits` and `cfg.seed`.
    n_jobs : int
        Worker processes for decoding the images (joblib's convention: -1 = all cores).
        Fewer than a few hundred images are checked in-process.
    verdicts : pipeline.data.verdicts.Verdicts, optional
        Earlier verdicts: an image unchanged since is not decoded again, the new verdicts are
        added to it (the caller saves them). Without it every image is decoded.
    dry_run_folds : bool
        With a group column, run the fold assignment itself (a passing check then means a passing
        folds stage; seconds for tens of thousands of groups). The folds stage, which runs it
        anyway, turns it off.

    Returns
    -------
    DataReport
        `ok` is True when there is no problem; `format()` is the readable report,
        `raise_if_failed()` raises `pipeline.data.transforms.DataError` carrying it.

    Nothing is written. See the module docstring for the checks, and
    :mod:`pipeline.data.image_check` for their cost.
    """
    run = CheckRun(cfg, verdicts, dry_run_folds)
    check_train(run)
    check_test(run)
    _check_images(run, n_jobs)
    return run.report


def check_train_images(cfg, n_jobs: int = -1, verdicts: Verdicts | None = None) -> DataReport:
    """The image part of `check_data` for the training images alone (`tables.read_train_table`'s rows).

    What the training and EDA stages run before reading pixels: with `verdicts` from an earlier check
    it decodes only the images that changed since, so a broken image is refused there and then.
    """
    from pipeline.data.tables import read_train_table

    run = CheckRun(cfg, verdicts)
    table = read_train_table(cfg)
    run.report.train_rows = len(table)
    csv = str(cfg.data.train_csv)
    for i, (path, rel) in enumerate(zip(table["image"].tolist(), table["source"].tolist())):
        run.refs.setdefault(os.path.normpath(path), []).append(ImageRef(csv, i + 2, rel, False))
    _check_images(run, n_jobs)
    return run.report


def require_train_images(cfg, n_jobs: int = -1) -> DataReport:
    """`check_train_images` with the output folder's verdicts (saved): raise DataError listing every
    broken training image; return the report (its warnings) when there is none."""
    from pipeline.data.verdicts import verdicts_path

    verdicts = Verdicts(verdicts_path(cfg))
    report = check_train_images(cfg, n_jobs, verdicts)
    verdicts.save()
    return report.raise_if_failed()
