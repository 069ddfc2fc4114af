"""What `make init` reads from a competition's folder: the layout, the columns, the test side.

Each decision is a `Finding`: the config key, its value and the evidence, printed by init and written
beside the key. Where two readings are possible a `Question` stops init with one line naming the flag
that settles it (``--label species``). Only a few rows and images are looked at (evenly spaced); init
then reads the whole config back through the pipeline's own readers. Nothing is written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.layouts import IMAGE_EXTENSIONS, LayoutError, TemplatePaths, class_folder_rows, is_image_name
from pipeline.fileio import read_text_csv

__all__ = ["InitOptions", "Question", "Finding", "Reading", "read_folder"]

_ROWS = 20                                   # rows of a CSV tried as image paths or ids
_TEST_WORDS = ("test", "eval", "val")        # folder / file names of the test side
_LABEL_NAMES = ("label", "labels", "class", "target", "category", "species", "y")


@dataclass
class InitOptions:
    """The flags that settle what the folder leaves open (`python -m pipeline init --help`)."""

    layout: str | None = None          # csv | folders | mask
    train_csv: str | None = None
    image_column: str | None = None
    label: str | None = None
    group: str | None = None
    no_group: bool = False
    sample: str | None = None
    id_column: str | None = None


class Question(ValueError):
    """Two readings of the folder are possible: the message asks, naming the flag that settles it."""


@dataclass
class Finding:
    key: str          # a config key ("data.label_column"), or a topic ("layout") that is only said
    value: object
    why: str


@dataclass
class Reading:
    """What init found: config values with their evidence, and the training images and labels."""

    root: Path
    layout: str = ""
    findings: list[Finding] = field(default_factory=list)
    images: list[str] = field(default_factory=list)     # full paths of a few training images
    labels: list[str] = field(default_factory=list)     # every training row's label
    groups: list[str] | None = None

    def set(self, key: str, value, why: str) -> None:
        self.findings.append(Finding(key, value, why))

    def say(self, topic: str, why: str) -> None:
        self.findings.append(Finding(topic, None, why))

    def path(self, rel: str = "") -> str:
        """A path inside the data folder, as the config writes it (relative to where make runs)."""
        return str(self.root / rel) if rel else str(self.root)


# ---- the folder --------------------------------------------------------------------------------

def _is_test_name(name: str) -> bool:
    return name.lower().startswith(_TEST_WORDS)


def _is_sample_name(name: str) -> bool:
    return "sample" in name.lower() or "submission" in name.lower()


def _image_folders(root: Path) -> list[str]:
    """Sub-folders (one level) holding images directly, and '' when the folder itself does."""
    found = [""] if any(is_image_name(n) for n in os.listdir(root)) else []
    return found + [name for name in _subfolders(root) if any(is_image_name(n) for n in os.listdir(root / name))]


def _subfolders(folder: Path) -> list[str]:
    """The visible sub-folders' names, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _class_parent(root: Path) -> str | None:
    """The folder holding one folder of images per class (`train/<class>/`), if any."""
    found = []
    for name in (n for n in _subfolders(root) if not _is_test_name(n)):
        subs = _subfolders(root / name)
        if len(subs) >= 2 and all(any(is_image_name(n) for n in os.listdir(root / name / s)) for s in subs):
            found.append(name)
    if len(found) > 1 and "train" in found:
        return "train"
    if len(found) > 1:
        raise ValueError(f"{', '.join(found)} all hold class folders; init reads one: rename the others, or write "
                         "the config yourself (data.layout: folders, data.class_folders)")
    return found[0] if found else None


def _csvs(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.lower().endswith(".csv") and (root / n).is_file())


def _is_mask(root: Path) -> bool:
    """The mask competition: train/train.csv (one row per person), train/images/, eval/info.csv."""
    people = root / "train" / "train.csv"
    if not (people.is_file() and (root / "train" / "images").is_dir() and (root / "eval" / "info.csv").is_file()):
        return False
    return {"id", "gender", "age", "path"} <= set(read_text_csv(people).columns)


def read_folder(folder: str | Path, opts: InitOptions) -> Reading:
    """Read the layout, the training rows and the test side of `folder`; Question or ValueError when it cannot."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give the folder you downloaded the competition into")
    reading = Reading(root)
    layout = _choose_layout(root, opts)
    if layout == "mask":
        reading.layout = "mask"
        reading.say("layout", "the mask competition: train/train.csv (one row per person), train/images/, "
                              "eval/info.csv (pipeline/competitions/mask)")
        return reading
    if layout == "folders":
        _read_class_folders(root, reading)
    else:
        _read_train_csv(root, layout, reading, opts)
    _read_test_side(root, reading, opts)
    return reading


def _choose_layout(root: Path, opts: InitOptions) -> str:
    """mask | folders | the train CSV's file name."""
    if opts.layout in ("mask", None) and _is_mask(root):
        return "mask"
    if opts.layout == "mask":
        raise ValueError(f"--layout mask: {root} lacks the mask competition's train/train.csv (id, gender, age, "
                         "path), train/images/ or eval/info.csv")
    candidates = [n for n in _csvs(root) if not _is_sample_name(n) and not _is_test_name(n)]
    if opts.train_csv:
        if not (root / opts.train_csv).is_file():
            raise ValueError(f"--train-csv {opts.train_csv}: no such file in {root}")
        candidates = [opts.train_csv]
    parent = _class_parent(root)
    if opts.layout == "folders" or (opts.layout is None and parent and not candidates):
        if not parent:
            raise ValueError(f"--layout folders: no folder of {root} holds one folder of images per class "
                             "(such as train/<class>/<image>)")
        return "folders"
    if not candidates:
        raise ValueError(f"{root}: found no train CSV (a .csv that is not a sample submission or test file) and "
                         "no class folders (train/<class>/<image>); is this the competition's folder?")
    if opts.layout is None and parent:
        raise Question(f"both {candidates[0]} and class folders in {parent}/ could list the training images: "
                       "settle it with --layout csv or --layout folders")
    if len(candidates) > 1:
        named = [n for n in candidates if n.lower() in ("train.csv", "labels.csv")]
        if len(named) != 1:
            raise Question(f"which CSV lists the training images: {' or '.join(candidates)}? settle it with "
                           + " or ".join(f"--train-csv {n}" for n in candidates))
        candidates = named
    return candidates[0]


# ---- the training side -------------------------------------------------------------------------

def _read_class_folders(root: Path, reading: Reading) -> None:
    parent = _class_parent(root)
    rows = class_folder_rows(root, parent)
    classes = sorted({label for _, label in rows})
    reading.layout = "folders"
    reading.set("data.layout", "folders", f"{parent}/ holds {len(classes)} folders of images "
                f"({', '.join(map(repr, classes[:5]))}{' ...' if len(classes) > 5 else ''}): the class is the folder's name")
    reading.set("data.class_folders", parent, "the folder of class folders, under data.image_root")
    reading.set("data.image_root", reading.path(), "the competition's folder")
    reading.labels = [label for _, label in rows]
    reading.images = [reading.path(rel) for rel, _ in _spread(rows, 16)]


def _spread(items: list, n: int) -> list:
    """Up to `n` of `items`, evenly spaced."""
    if not items:
        return []
    return [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round())]


def _read_train_csv(root: Path, name: str, reading: Reading, opts: InitOptions) -> None:
    frame = read_text_csv(root / name)
    if frame.empty:
        raise ValueError(f"{root / name} has no rows")
    column, template, why = _image_column(root, frame, name, opts)
    reading.layout = "csv"
    reading.set("data.train_csv", reading.path(name), f"the table of training images ({len(frame)} rows)")
    reading.set("data.image_root", reading.path(), "image paths are relative to the competition's folder")
    reading.set("data.image_column", column, why)
    if template:
        reading.set("data.train_image_template", template, f"'{column}' holds ids; each row's image is {template}")
    label = _label_column(frame, column, opts, _sample_frame(root, opts))
    reading.set("data.label_column", label.key, label.why)
    group = _group_column(frame, column, label.key, opts)
    reading.set("data.group_column", group.key, group.why)
    reading.labels = frame[label.key].tolist()
    reading.groups = frame[group.key].tolist() if group.key else None
    rows = _spread(frame[column].tolist(), 16)
    paths = TemplatePaths(root, template, "data.train_image_template") if template else None
    reading.images = [reading.path(paths.rel(v) if paths else v) for v in rows]


def _tried_rows(frame: pd.DataFrame) -> list[int]:
    return [int(i) for i in np.unique(np.linspace(0, len(frame) - 1, min(_ROWS, len(frame))).round())]


def _image_column(root: Path, frame: pd.DataFrame, name: str, opts: InitOptions) -> tuple[str, str | None, str]:
    """(column, template or None, evidence): the column whose values are image paths, or ids of images in a folder."""
    if opts.image_column and opts.image_column not in frame.columns:
        raise ValueError(f"--image-column {opts.image_column}: {name} has no such column; its columns are "
                         f"{list(frame.columns)}")
    rows = _tried_rows(frame)
    found = []
    for column in [opts.image_column] if opts.image_column else list(frame.columns):
        values = frame[column].iloc[rows].tolist()
        if any(not v.strip() for v in values):
            continue
        if all(_inside(v) and (root / v).is_file() for v in values):
            found.append((column, None, f"its values are image paths under {root} ({values[0]!r} ...)"))
            continue
        for folder in _image_folders(root):
            template = _ids_template(root, folder, values)
            if template:
                found.append((column, template, f"its values are ids of images in {folder or '.'}/ "
                                                f"({values[0]!r} is {template.format(id=values[0])})"))
                break
    if not found:
        raise ValueError(f"no column of {name} names the images: none of {list(frame.columns)} holds paths of "
                         f"files under {root}, or ids of the images in one of its folders; name it with "
                         "--image-column (the images must exist)")
    if len(found) > 1:
        raise Question(f"which column of {name} names the images: {' or '.join(c for c, _, _ in found)}? "
                       "settle it with " + " or ".join(f"--image-column {c}" for c, _, _ in found))
    return found[0]


def _inside(rel: str) -> bool:
    return not os.path.isabs(rel) and ".." not in Path(rel).parts


def _ids_template(root: Path, folder: str, values: list[str]) -> str | None:
    """``<folder>/{id}.<ext>`` (or ``<folder>/{id}`` when the extension varies or is in the id) when every
    value names one image of `folder`, else None."""
    template = f"{folder}/{{id}}" if folder else "{id}"
    paths = TemplatePaths(root, template, "")
    try:
        found = [paths.rel(v) for v in values]
    except LayoutError:
        return None
    if not all((root / p).is_file() for p in found):
        return None
    extensions = {os.path.splitext(p)[1] for p in found}
    if len(extensions) == 1 and not any(v.lower().endswith(IMAGE_EXTENSIONS) for v in values):
        return template + extensions.pop()
    return template


def _sample_frame(root: Path, opts: InitOptions) -> pd.DataFrame | None:
    path = _sample_path(root, opts)
    return read_text_csv(path) if path else None


def _sample_path(root: Path, opts: InitOptions) -> Path | None:
    if opts.sample:
        path = root / opts.sample if not os.path.isabs(opts.sample) else Path(opts.sample)
        if not path.is_file():
            raise ValueError(f"--sample {opts.sample}: {path} does not exist")
        return path
    found = [n for n in _csvs(root) if _is_sample_name(n)]
    if len(found) > 1:
        raise Question(f"which CSV is the sample submission: {' or '.join(found)}? settle it with "
                       + " or ".join(f"--sample {n}" for n in found))
    return root / found[0] if found else None


def _repeats(values: pd.Series) -> bool:
    """Values that repeat across rows, with at least two of them and no blank."""
    return 2 <= values.nunique() < len(values) and not (values.str.strip() == "").any()


@dataclass
class _Choice:
    key: str | None
    why: str


def _label_column(frame: pd.DataFrame, image_column: str, opts: InitOptions, sample) -> _Choice:
    if opts.label:
        if opts.label not in frame.columns:
            raise ValueError(f"--label {opts.label}: no such column; the columns are {list(frame.columns)}")
        return _Choice(opts.label, "--label")
    candidates = [c for c in frame.columns if c != image_column and _repeats(frame[c])]
    if sample is not None:
        named = [c for c in sample.columns[1:] if c in candidates]
        if len(named) == 1:
            return _Choice(named[0], f"the sample submission's column '{named[0]}' is also in the train CSV")
        per_class = [c for c in candidates if sorted(sample.columns[1:]) == sorted(frame[c].unique())]
        if len(per_class) == 1:
            return _Choice(per_class[0], f"the sample submission's columns beside its id are the values of "
                                         f"'{per_class[0]}'")
    if len(candidates) == 1:
        n = frame[candidates[0]].nunique()
        return _Choice(candidates[0], f"the only other column whose values repeat ({n} classes)")
    if not candidates:
        raise ValueError(f"no column of the train CSV can be the label (a column whose values repeat across rows, "
                         f"beside '{image_column}'); its columns are {list(frame.columns)}")
    named = [c for c in candidates if c.lower() in _LABEL_NAMES]
    hint = f" ('{named[0]}' is named like one)" if len(named) == 1 else ""
    raise Question(f"which column is the label: {' or '.join(candidates)}?{hint} settle it with "
                   + " or ".join(f"--label {c}" for c in candidates))


def _group_column(frame: pd.DataFrame, image_column: str, label: str, opts: InitOptions) -> _Choice:
    """A column whose values repeat across rows, each carrying one label, may be a group (a person, a patient)."""
    if opts.group:
        if opts.group not in frame.columns or opts.group in (image_column, label):
            raise ValueError(f"--group {opts.group}: not a column beside the image and the label; the columns are "
                             f"{list(frame.columns)}")
        return _Choice(opts.group, "--group: rows sharing a value stay in one fold")
    if opts.no_group:
        return _Choice(None, "--no-group: rows are split into folds freely")
    candidates, mixed = [], []
    for column in frame.columns:
        if column in (image_column, label) or not _repeats(frame[column]):
            continue
        one_label = frame.groupby(column)[label].nunique().max() == 1
        (candidates if one_label else mixed).append(column)
    said = "".join(f"; '{c}' repeats but mixes labels within a value (grouped folds need one label per group)"
                   for c in mixed)
    if not candidates:
        return _Choice(None, f"no other column repeats with one label per value: rows are split freely{said}")
    counts = ", ".join(f"'{c}': {frame[c].nunique()} values over {len(frame)} rows" for c in candidates)
    raise Question(f"{counts}: rows sharing a value (one person, patient, ...) must stay in one fold? settle it "
                   "with " + " or ".join(f"--group {c}" for c in candidates) + " or --no-group")


# ---- the test side -----------------------------------------------------------------------------

def _read_test_side(root: Path, reading: Reading, opts: InitOptions) -> None:
    from pipeline.data.tables import class_list
    from pipeline.results.formats import detect_format

    path = _sample_path(root, opts)
    if path is None:
        _test_folder_only(root, reading, opts)
        return
    sample = read_text_csv(path)
    if len(sample.columns) < 2 or sample.empty:
        raise ValueError(f"{path}: a sample submission needs an id column, a prediction column and rows")
    id_column = opts.id_column or sample.columns[0]
    if id_column not in sample.columns:
        raise ValueError(f"--id-column {id_column}: {path} has no such column; its columns are {list(sample.columns)}")
    target = next(c for c in sample.columns if c != id_column)
    fmt = detect_format(sample, id_column, target, class_list(reading.labels))
    template = _test_template(root, sample[id_column].iloc[_tried_rows(sample)].tolist(), path)
    reading.set("data.sample_submission", str(path), f"the sample submission ({len(sample)} rows); the submission "
                f"is written in its shape: {fmt.kind} ({fmt.why})")
    reading.set("data.id_column", id_column, "--id-column" if opts.id_column else "its first column")
    reading.set("data.target_column", target, "its prediction column")
    reading.set("data.test_image_template", template, f"each id's image ({sample[id_column].iloc[0]!r} is "
                f"{TemplatePaths(root, template, '').rel(sample[id_column].iloc[0])})")


def _test_template(root: Path, ids: list[str], sample: Path) -> str:
    folders = sorted(_image_folders(root), key=lambda f: not _is_test_name(f))   # test/ first
    for folder in folders:
        template = _ids_template(root, folder, ids)
        if template:
            return template
    raise ValueError(f"the ids of {sample} ({', '.join(map(repr, ids[:3]))} ...) name no image in "
                     f"{', '.join(f or '.' for f in folders) or 'any folder'} of {root}; are the test images there?")


def _test_folder_only(root: Path, reading: Reading, opts: InitOptions) -> None:
    folders = [f for f in _image_folders(root) if f and _is_test_name(f)]
    if not folders:
        raise ValueError(f"{root}: no test images: no sample submission (*submission*.csv) and no test/ folder of "
                         "images; the pipeline predicts a test set")
    if len(folders) > 1:
        raise ValueError(f"{root}: several test folders ({', '.join(folders)}) and no sample submission; write one "
                         "(an id column naming each test image, and a prediction column) and give it with --sample")
    folder = folders[0]
    n = len([name for name in os.listdir(root / folder) if is_image_name(name)])
    target = _label_target(reading)
    if not opts.id_column:
        raise Question(f"no sample submission: the submission will be one row per image of {folder}/ ({n} images), "
                       f"columns <id>,{target}, the id being the file name; name the id column with --id-column NAME")
    reading.set("data.sample_submission", None, f"none ships: the pipeline lists the {n} images of {folder}/ into one "
                "(in <output_dir>/lists/), the file name as the id")
    reading.set("data.id_column", opts.id_column, "--id-column")
    reading.set("data.target_column", target, "the submission's prediction column: the label's name")
    reading.set("data.test_image_template", f"{folder}/{{id}}", f"the test images of {folder}/, the id a file name")


def _label_target(reading: Reading) -> str:
    label = next((f.value for f in reading.findings if f.key == "data.label_column"), None)
    return label or "label"
