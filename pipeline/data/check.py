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

Nothing is written: the check only reads.

Cost. Every image is opened, ``verify()``-ed (PNG: chunk CRCs), reopened and fully
``load()``-ed -- decoding every byte is the only way to catch a file cut short. JPEGs
are loaded in draft mode (libjpeg's 1/8 DCT scaling): the whole entropy-coded stream is
still read and Huffman-decoded, so truncation is caught exactly as in a full decode
(tested), but the inverse DCT and colour conversion shrink 64-fold. Measured on one
core: a 32x32 PNG costs ~0.3 ms (all Python overhead); a 384x512 JPEG ~0.65 ms
(~0.95 ms with a full-size decode). The mask competition's 19k JPEGs are ~12 s of
CPU, divided among the workers; the 2.5k demo PNGs ~0.7 s.

Parallelism: ``joblib.Parallel(n_jobs, prefer="processes")`` over chunks of a few
hundred paths. Processes, not threads, because (1) only the decode itself releases the
GIL -- opening, header parsing and ``verify()`` are Python and hold it (~0.25 ms an
image), so threads stop scaling at ~2-3x while processes scale with the cores; (2) a
hostile file that crashes a C decoder or exhausts memory takes down a worker, not the
check, and is reported. The price is starting the workers (0.5-2 s; this module imports
nothing heavy at the top, so a worker never loads pandas or torch), so fewer than
``_SERIAL_BELOW`` images are checked in-process.

Call it from the CLI (``python -m pipeline check``) and at the start of the folds stage::

    report = check_data(cfg)
    report.raise_if_failed()      # DataError carrying report.format()
    print(report.format())        # the summary and any warnings
"""

from __future__ import annotations

import difflib
import os
from collections import Counter, defaultdict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from joblib import Parallel, delayed, effective_n_jobs
from PIL import Image, ImageFile, UnidentifiedImageError

# Heavy imports (pandas, scikit-learn via pipeline.data.folds, torch via pipeline.data.transforms) happen
# inside the functions that need them: worker processes import this module to run
# `_inspect_chunk`, and must not spend seconds importing torch.

__all__ = ["check_data", "DataReport", "Problem"]

# Lines shown per kind of problem in `DataReport.format()` before "... and N more".
_MAX_SHOWN = 10
# Fewer images than this are checked in-process: starting worker processes costs more.
_SERIAL_BELOW = 400
# Paths per parallel task: big enough that inter-process overhead is noise.
_CHUNK = 256
# Files counted as images when listing the test folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
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
_EXIF_ORIENTATION = 0x0112


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


# ----------------------------------------------------------------------------------------
# Images: one decode per file, in worker processes


class _ImageResult(NamedTuple):
    status: str           # ok | missing | not-a-file | unreadable | not-an-image | corrupt | too-large
    mode: str | None      # PIL mode, when the header could be read
    detail: str = ""      # the exception text, for broken files
    frames: int = 1
    rotated: bool = False  # an EXIF orientation tag other than "upright"


def _inspect_image(path: str) -> _ImageResult:
    """Open, verify, reopen and decode one image, as `load_rgb` will; never raises."""
    mode = None
    try:
        with Image.open(path) as img:
            fmt, mode, size = img.format, img.mode, img.size
            frames = getattr(img, "n_frames", 1) if fmt in ("GIF", "TIFF", "WEBP", "PNG") else 1
            rotated = False
            if fmt in ("JPEG", "MPO", "WEBP", "TIFF"):
                rotated = img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1)
            img.verify()
        with Image.open(path) as img:
            if fmt in ("JPEG", "MPO"):
                img.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            if mode != "RGB" and not _is_high_bit_depth(mode):
                img.convert("RGB")  # what load_rgb does; fails for modes PIL cannot convert
    except FileNotFoundError:
        return _ImageResult("missing", None)
    except (IsADirectoryError, NotADirectoryError):
        return _ImageResult("not-a-file", None)
    except PermissionError as exc:
        return _ImageResult("unreadable", None, str(exc))
    except UnidentifiedImageError:
        return _ImageResult("not-an-image", None, _describe_file(path))
    except Image.DecompressionBombError as exc:
        return _ImageResult("too-large", mode, str(exc))
    except Exception as exc:  # noqa: BLE001 -- any decoder error means load_rgb would fail too
        return _ImageResult("corrupt", mode, f"{type(exc).__name__}: {exc}")
    return _ImageResult("ok", mode, "", frames, rotated)


def _inspect_chunk(paths: list[str]) -> list[_ImageResult]:
    """Inspect many images; truncated files must raise, whatever the caller's PIL setting."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return [_inspect_image(p) for p in paths]
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _describe_file(path: str) -> str:
    """What a file that is not an image seems to be, without quoting any of its content."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        size = os.path.getsize(path)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    if b"\0" not in head:
        try:
            head.decode("utf-8") if len(head) < 512 else head[:-3].decode("utf-8")   # [:-3]: a cut character
            return f"it is a text file of {size} bytes"
        except UnicodeDecodeError:
            pass
    return f"it is {size} bytes of binary data in no image format PIL knows"


def _is_high_bit_depth(mode: str | None) -> bool:
    return mode is not None and (mode in ("I", "F") or mode.startswith("I;"))


def _inspect_all(paths: list[str], n_jobs: int) -> tuple[list[_ImageResult], str | None]:
    """Inspect `paths` (in parallel when worth it); the second value explains a crashed worker."""
    workers = effective_n_jobs(n_jobs)
    if workers <= 1 or len(paths) < _SERIAL_BELOW:
        return _inspect_chunk(paths), None
    size = max(32, min(_CHUNK, -(-len(paths) // (4 * workers))))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    try:
        parts = Parallel(n_jobs=n_jobs, prefer="processes")(delayed(_inspect_chunk)(c) for c in chunks)
    except (BrokenProcessPool, MemoryError) as exc:  # a worker killed by a decoder crash or out of memory
        return [], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return [r for part in parts for r in part], None


# ----------------------------------------------------------------------------------------
# Reading the CSVs without stopping at the first problem


class _Ref(NamedTuple):
    csv: str      # the CSV that names the image
    row: int      # its 1-based line number (header = line 1)
    rel: str      # the path as written (or as the template made it)
    test: bool


def _line(index: int) -> int:
    """0-based data row → 1-based CSV line counting the header."""
    return int(index) + 2


def _blank_mask(series):
    """True where a CSV cell is empty, NaN or only spaces (as pipeline.data.transforms treats labels)."""
    return (series.isna() | (series.astype(str).str.strip() == "")).to_numpy()


def _plain(value):
    return value.item() if hasattr(value, "item") else value


class _Checker:
    def __init__(self, cfg, n_jobs: int):
        self.cfg = cfg
        self.d = cfg.data
        self.n_jobs = n_jobs
        self.report = DataReport()
        self.refs: dict[str, list[_Ref]] = {}      # normalised full path → who names it
        self.skipped_roots: set[str] = set()
        self.expected_test: set[str] = set()        # test images named through the template

    # -- helpers
    def problem(self, file, row, kind, message, image=None) -> None:
        self.report.problems.append(Problem(str(file), row, kind, message, image))

    def warn(self, file, row, kind, message, image=None) -> None:
        self.report.warnings.append(Problem(str(file), row, kind, message, image))

    def _generated_hint(self) -> str:
        if self.d.demo:
            return " (data.demo is true: `make data` writes it)"
        if getattr(getattr(self.cfg, "mask", None), "enabled", False):
            return " (mask.enabled is true: `make data` builds it from train/train.csv)"
        return ""

    def read_csv(self, path: str, columns: dict[str, str], what: str, key: str):
        """Read a CSV; return (frame, present required columns) or (None, set()) after reporting."""
        import pandas as pd

        from pipeline.fileio import read_text_csv

        p = Path(path)
        if not p.is_file():
            folder = "" if p.parent.is_dir() else f" (its folder {p.parent} does not exist either)"
            self.problem(path, None, "missing-csv", f"{what} not found{folder}{self._generated_hint()}; "
                         f"check the path in the config ({key}).")
            return None, set()
        if p.stat().st_size == 0:
            self.problem(path, None, "empty-csv", f"{what} is empty (0 bytes); expected a header with "
                         f"column(s) {list(columns)} and one row per image. Re-download or regenerate it.")
            return None, set()
        try:
            frame = read_text_csv(p)   # exact text: "NA" is a label, "0001" an id, not 1
        except pd.errors.EmptyDataError:
            self.problem(path, None, "empty-csv", f"{what} holds no header (only blank lines); expected "
                         f"column(s) {list(columns)}. Re-download or regenerate it.")
            return None, set()
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            self.problem(path, None, "unreadable-csv", f"{what} cannot be parsed as CSV: "
                         f"{str(exc).strip()}. Fix that line (unbalanced quotes, extra commas) or re-save "
                         "the file as UTF-8 CSV.")
            return None, set()
        found = [str(c) for c in frame.columns]
        for column, key in columns.items():
            if column not in frame.columns:
                close = difflib.get_close_matches(column, found, n=1, cutoff=0.6)
                close += [c for c in found if c.strip().lower() == column.strip().lower() and c not in close]
                hint = f" Did you mean '{close[0]}'?" if close else ""
                self.problem(path, 1, "missing-column", f"{what} has no column '{column}' ({key}); its header "
                             f"is {found}.{hint} Fix the header or set {key} in the config.")
        if frame.empty:
            self.problem(path, None, "empty-csv", f"{what} has a header but no rows; it must list one row "
                         "per image.")
        return frame, {c for c in columns if c in frame.columns}

    def _add_ref(self, root: Path, rel, index: int, csv: str, column_desc: str, test: bool) -> str | None:
        """Record an image path from a CSV cell; return its key, or None if blank or escaping its root."""
        from pipeline.data.tables import DataError, safe_join

        row = _line(index)
        if rel is None or (isinstance(rel, float) and rel != rel) or not str(rel).strip():
            self.problem(csv, row, "blank-image-path", f"{column_desc} is blank; give the image path "
                         "or drop the row.")
            return None
        rel = str(rel)
        try:
            full = safe_join(root, rel, f"{column_desc}")
        except DataError as exc:
            self.problem(csv, row, "path-escapes-root", f"{exc}.", image=rel)
            return None
        key = os.path.normpath(str(full))
        self.refs.setdefault(key, []).append(_Ref(csv, row, rel, test))
        return key

    # -- the training table
    def check_train(self) -> None:
        d = self.d
        csv = d.train_csv
        columns = {d.image_column: "data.image_column", d.label_column: "data.label_column"}
        for col, key in ((d.group_column, "data.group_column"), (d.stratify_column, "data.stratify_column"),
                         (d.true_label_column, "data.true_label_column")):
            if col:
                columns.setdefault(col, key)
        frame, present = self.read_csv(csv, columns, "train CSV", "data.train_csv")
        if frame is None or frame.empty:
            return
        self.report.train_rows = len(frame)

        label_columns = {}
        for col, key in ((d.label_column, "data.label_column"), (d.stratify_column, "data.stratify_column"),
                         (d.true_label_column, "data.true_label_column")):
            if col and col in present:
                label_columns.setdefault(col, key)
        for col, key in label_columns.items():
            for i in frame.index[_blank_mask(frame[col])]:
                self.problem(csv, _line(i), "blank-label", f"blank value in label column '{col}' ({key}); "
                             "fill in the label or drop the row.")
        if d.group_column and d.group_column in present:
            for i in frame.index[_blank_mask(frame[d.group_column])]:
                self.problem(csv, _line(i), "blank-group", f"blank group id in column '{d.group_column}' "
                             "(data.group_column); all blank rows would form one group 'nan'. Give every "
                             "row its group id (e.g. the person or patient) or drop the row.")

        if d.image_column in present:
            root = Path(d.image_root)
            if not root.is_dir():
                self.problem(d.image_root, None, "missing-root", f"image root (data.image_root) does not "
                             f"exist{self._generated_hint()}; no training image can be found. Fix the path.")
                self.skipped_roots.add(os.path.normpath(str(root)))
            first_seen: dict[str, int] = {}
            for i, rel in zip(frame.index, frame[d.image_column]):
                key = self._add_ref(root, rel, i, csv, f"column '{d.image_column}'", test=False)
                if key is None:
                    continue
                if key in first_seen:
                    j = first_seen[key]
                    labels = ""
                    if d.label_column in present:
                        a, b = frame.at[j, d.label_column], frame.at[i, d.label_column]
                        labels = (f" with a different label ({_plain(a)!r} there, {_plain(b)!r} here)"
                                  if str(a) != str(b) else " with the same label")
                    self.problem(csv, _line(i), "duplicate-image", f"image '{rel}' is already listed on line "
                                 f"{_line(j)}{labels}; it would be trained (and validated) twice. Drop the "
                                 "duplicate row" + (" and decide which label is right." if "different" in labels
                                                     else "."), image=str(rel))
                else:
                    first_seen[key] = i
        self.check_folds(frame, present)

    def check_folds(self, frame, present: set) -> None:
        """Class sizes against folds.n_splits and one label per group, as the folds stage needs."""
        d, csv, k = self.d, self.d.train_csv, self.cfg.folds.n_splits
        strat = d.stratify_column or d.label_column
        strat_key = "data.stratify_column" if d.stratify_column else "data.label_column"
        grouped = bool(d.group_column)
        if strat not in present or (grouped and d.group_column not in present):
            return
        usable = ~_blank_mask(frame[strat])
        if grouped:
            usable &= ~_blank_mask(frame[d.group_column])
        if d.label_column in present:
            usable &= ~_blank_mask(frame[d.label_column])
        rows = frame[usable]
        if rows.empty:
            return
        labels = rows[strat]
        n_before = len(self.report.problems)
        if grouped:
            groups = rows[d.group_column].astype(str)
            by_group = labels.groupby(groups.to_numpy(), sort=True)
            n_values = by_group.nunique()
            positions = by_group.indices if (n_values > 1).any() else {}
            for g in n_values.index[(n_values > 1).to_numpy()]:
                in_group = rows.index[positions[g]]
                values = list(dict.fromkeys(_plain(v) for v in labels.loc[in_group]))
                first = labels.loc[in_group[0]]
                odd = [i for i in in_group if labels.loc[i] != first]
                shown = "; ".join(f"line {_line(i)}: {_plain(labels.loc[i])!r}" for i in in_group[:_MAX_SHOWN])
                self.problem(csv, _line(odd[0]), "group-mixed-labels",
                             f"group {g!r} (column '{d.group_column}') has {len(values)} different values "
                             f"of '{strat}' ({strat_key}): {values} ({shown}"
                             f"{' ...' if len(in_group) > _MAX_SHOWN else ''}). Grouped folds need one value "
                             f"per group: fix the labels, split the group into separate ids if its images are "
                             f"truly independent, or stratify on a per-group column (data.stratify_column).")
            pairs = rows.assign(_g=groups.to_numpy()).drop_duplicates([strat, "_g"])
            counts, unit = pairs[strat].value_counts(), "groups"
        else:
            counts, unit = labels.value_counts(), "rows"
        smallest = int(counts.min())
        for cls, n in counts.sort_values().items():
            if n >= k:
                break
            lower = f"lower folds.n_splits to at most {smallest}, " if smallest >= 2 else ""
            self.problem(csv, None, "class-too-small",
                         f"class {_plain(cls)!r} (column '{strat}') has {int(n)} "
                         f"{unit if n != 1 else unit[:-1]}, but folds.n_splits={k} needs at least {k} so that "
                         f"every fold can validate on one. To fix: {lower}merge or drop the class, "
                         "or collect more data.")
        if not grouped or len(self.report.problems) > n_before or not usable.all():
            return
        # Without groups the checks above are complete (StratifiedKFold splits any classes of at
        # least k rows). With groups, run the real assignment (StratifiedGroupKFold's greedy split can
        # still leave a fold empty): a passing check then means a passing folds stage. It costs
        # ~0.5 s for 500 groups, ~2 s for the mask competition's 2700.
        from pipeline.data.folds import assign_folds
        try:
            assign_folds(labels.to_numpy(), k, self.cfg.seed,
                         groups=groups.to_numpy())
        except ValueError as exc:
            self.problem(csv, None, "folds-failed", f"the folds stage would fail: {exc}")

    # -- the sample submission
    def check_test(self) -> None:
        d = self.d
        csv = d.sample_submission
        columns = {d.id_column: "data.id_column", d.target_column: "data.target_column"}
        if d.test_path_column:
            columns.setdefault(d.test_path_column, "data.test_path_column")
        frame, present = self.read_csv(csv, columns, "sample submission",
                                       "data.sample_submission")
        if frame is None or frame.empty:
            return
        self.report.test_rows = len(frame)
        root = Path(d.test_root or d.image_root)
        root_key = "data.test_root" if d.test_root else "data.image_root"
        if not root.is_dir() and os.path.normpath(str(root)) not in self.skipped_roots:
            self.problem(str(root), None, "missing-root", f"test image root ({root_key}) does not exist"
                         f"{self._generated_hint()}; no test image can be found. Fix the path.")
            self.skipped_roots.add(os.path.normpath(str(root)))

        ids_ok = d.id_column in present
        blank_id = _blank_mask(frame[d.id_column]) if ids_ok else None
        if ids_ok:
            for i in frame.index[blank_id]:
                self.problem(csv, _line(i), "blank-id", f"blank id in column '{d.id_column}' "
                             "(data.id_column); every row of the sample submission needs its id.")
            seen: dict[str, int] = {}
            for i, value in zip(frame.index, frame[d.id_column].astype(str)):
                if blank_id[i]:
                    continue
                if value in seen:
                    self.problem(csv, _line(i), "duplicate-id", f"id {value!r} is already on line "
                                 f"{_line(seen[value])}; a submission needs one row per id. Drop the duplicate "
                                 "row (or check the id column, data.id_column).")
                else:
                    seen[value] = i

        if d.test_path_column:
            if d.test_path_column in present:
                for i, rel in zip(frame.index, frame[d.test_path_column]):
                    self._add_ref(root, rel, i, csv, f"column '{d.test_path_column}'", test=True)
            return
        if not ids_ok:
            return
        template = d.test_image_template
        expected: set[str] = set()
        for i, value in zip(frame.index, frame[d.id_column]):
            if blank_id[i]:
                continue
            try:
                rel = template.format(id=value)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                self.problem(csv, None, "bad-template", f"data.test_image_template {template!r} cannot be "
                             f"filled in ({type(exc).__name__}: {exc}); it must contain '{{id}}' and no other "
                             "braces, e.g. 'test/{id}.png'.")
                return
            key = self._add_ref(root, rel, i, csv, f"id {_plain(value)!r} through "
                                f"data.test_image_template {template!r}", test=True)
            if key is not None:
                expected.add(key)
        self.expected_test = expected

    def check_test_folder(self, missing_test: int) -> None:
        """With a template, compare the test folder's image files with the ids."""
        expected = self.expected_test
        if not expected:
            return
        csv, template = self.d.sample_submission, self.d.test_image_template
        folders = {os.path.dirname(p) for p in expected}
        train_images = {p for p, refs in self.refs.items() if any(not r.test for r in refs)}
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
            self.problem(csv, None, "test-ids-mismatch",
                         f"none of the {len(expected)} ids has an image through data.test_image_template "
                         f"{template!r}, yet the test folder holds {len(extra)} image(s) such as {example!r}. "
                         "Make the template match the file names (do the ids already include the "
                         "extension? is the folder right?).")
            return
        for path in extra:
            self.warn(path, None, "extra-test-image",
                      f"image in the test folder that no id in {csv} refers to; it will not be predicted. "
                      "Fine if the competition ships extra files; otherwise the sample submission is "
                      "incomplete or data.test_image_template does not match the file names.", image=path)

    # -- images
    def check_images(self) -> None:
        paths = [p for p in self.refs
                 if not any(p.startswith(root + os.sep) or p == root for root in self.skipped_roots)]
        results, crash = _inspect_all(paths, self.n_jobs)
        if crash is not None:
            self.problem(self.d.image_root, None, "checker-crashed",
                         f"a worker died while decoding images ({crash}): some file crashes the image "
                         "decoder or exhausts memory. Find it by checking subsets of the images, or run "
                         "with fewer parallel jobs to see memory use.")
            return
        self.report.images_checked = len(paths)
        modes: dict[str, list[tuple[str, _Ref]]] = defaultdict(list)
        multi, rotated = [], []
        missing_test = 0
        sibling_cache: dict[str, dict[str, list[str]]] = {}
        for path, res in zip(paths, results):
            refs = self.refs[path]
            ref = refs[0]
            also = (" (also named on " + ", ".join(f"{Path(r.csv).name} line {r.row}" for r in refs[1:6])
                    + (" ..." if len(refs) > 6 else "") + ")") if len(refs) > 1 else ""
            if res.status == "missing":
                missing_test += ref.test
                self._report_missing(path, ref, also, sibling_cache)
                continue
            if res.status != "ok" or _is_high_bit_depth(res.mode):
                self._report_broken(path, res, ref, also)
                continue
            if res.mode != "RGB":
                modes[res.mode].append((path, ref))
            if res.frames > 1:
                multi.append((path, ref, res.frames))
            if res.rotated:
                rotated.append((path, ref))
        self.check_test_folder(missing_test)
        for mode, items in sorted(modes.items(), key=lambda kv: -len(kv[1])):
            desc = _SAFE_MODES.get(mode, f"mode {mode} (PIL converts it)")
            path, ref = items[0]
            self.warn(ref.csv, ref.row, "mode-converted",
                      f"{len(items)} image(s) are mode {mode}: {desc}; load_rgb converts them to RGB. "
                      f"First: {path}. Nothing to do unless that conversion is not what you want.", image=path)
        if multi:
            path, ref, n = multi[0]
            self.warn(ref.csv, ref.row, "multi-frame", f"{len(multi)} image(s) hold several frames (e.g. "
                      f"{path}: {n}); only the first frame is used.", image=path)
        if rotated:
            path, ref = rotated[0]
            self.warn(ref.csv, ref.row, "exif-orientation",
                      f"{len(rotated)} image(s) carry an EXIF orientation tag (e.g. {path}); load_rgb decodes "
                      "the pixels as stored and ignores it, so these reach the model rotated or mirrored. "
                      "Harmless if train and test agree; otherwise re-save them upright "
                      "(PIL.ImageOps.exif_transpose).", image=path)
        shared = [p for p, refs in self.refs.items() if {r.test for r in refs} == {True, False}]
        if shared:
            ref = next(r for r in self.refs[shared[0]] if r.test)
            self.warn(ref.csv, ref.row, "train-test-overlap",
                      f"{len(shared)} image(s) are both training and test images (e.g. {shared[0]}); check "
                      "the paths: the test score of those is meaningless.", image=shared[0])

    def _report_missing(self, path: str, ref: _Ref, also: str, cache) -> None:
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
            self.problem(ref.csv, ref.row, "missing-test-image",
                         f"no image for this test row: {path} does not exist{also}.{hint} Every id needs an "
                         "image: check data.test_image_template / data.test_path_column and data.test_root, "
                         "or re-download the test images.", image=path)
        else:
            self.problem(ref.csv, ref.row, "missing-image",
                         f"image {path} does not exist{also}.{hint} Fix the path (relative to "
                         "data.image_root) or drop the row.", image=path)

    def _report_broken(self, path: str, res: _ImageResult, ref: _Ref, also: str) -> None:
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
            text = (f"{path} has {depth}{also}. Convert the images to 8-bit yourself before training, "
                    "scaling by the range the data really uses (dividing by 256 is wrong for 12-bit data or "
                    "for images that use only part of the range; e.g. rescale each image's min..max or a "
                    "fixed window to 0..255), then save as 8-bit PNG.")
        self.problem(ref.csv, ref.row, kind, text, image=path)


def check_data(cfg, n_jobs: int = -1) -> DataReport:
    """Check the train CSV, the sample submission and every image they name; report all problems.

    Parameters
    ----------
    cfg : pipeline.config.Config
        Reads `cfg.data` (CSVs, columns, roots, test template or path column),
        `cfg.folds.n_splits` and `cfg.seed`.
    n_jobs : int
        Worker processes for decoding the images (joblib's convention: -1 = all cores).
        Fewer than a few hundred images are checked in-process.

    Returns
    -------
    DataReport
        `ok` is True when there is no problem; `format()` is the readable report,
        `raise_if_failed()` raises `pipeline.data.transforms.DataError` carrying it.

    Nothing is written. See the module docstring for the checks and their cost.
    """
    checker = _Checker(cfg, n_jobs)
    checker.check_train()
    checker.check_test()
    checker.check_images()
    return checker.report
