"""The Boostcamp mask-classification competition: its folder layout → the pipeline's train CSV.

The competition ships one row per *person* and seven photos per person::

    <raw_root>/train/train.csv                 id,gender,race,age,path
    <raw_root>/train/images/<path>/mask1.jpg   ... mask5, incorrect_mask, normal
                                               (.jpg/.jpeg/.png mixed; `._mask1.jpg`
                                               style hidden junk files are skipped)
    <raw_root>/eval/info.csv                   ImageID,ans   (the sample submission)
    <raw_root>/eval/images/<ImageID>

`prepare_mask_data` turns this into the pipeline's input contract (pipeline/data.py):
one row per image, paths relative to `raw_root` (so `data.image_root` = raw_root),
with these columns:

    image         train/images/000004_male_Asian_54/mask1.jpg
    label         class 0..17 with the TRAINING age cut-off (`mask.age_cutoff`)
    true_label    class 0..17 with the competition's cut-off, 60 (score on this)
    group         the person id: all seven photos of a person share a fold
    person_label  gender*3 + true age group (0..5): one value per person, the column
                  to stratify grouped folds on (`label` differs within a person)
    mask          0 wear (mask1-5), 1 incorrect (incorrect_mask), 2 not wearing (normal)
    gender        0 male, 1 female
    age           years (after relabelling)
    age_group     true age group: 0 under 30, 1 30-59, 2 60 and over

Classes are ``class = mask*6 + gender*3 + age_group`` (18 classes, scored by macro-F1).

Training age cut-off
    Few people are 60 or over, and the photos of 58- and 59-year-olds look alike
    to those of 60-year-olds, so moving the cut-off down (e.g. 58) for TRAINING
    labels is a known trick. It changes `label` only: `true_label`, `age_group` and
    `person_label` always use 60, so validation scores and folds stay comparable
    between cut-offs. Validation (checkpoint choice, OOF table, CV score) must
    compare predictions with `true_label`, mapped through the same class list as
    `label` (use the fixed list 0..17).

Relabel file (`mask.relabel_file`)
    A CSV ``id,field,value`` of corrections to the competition's labels, applied
    before any label is computed (to `label` and `true_label` alike)::

        id,field,value
        001498,gender,female
        004432,age,61
        000020/incorrect_mask,mask,not_wear
        000020/normal,mask,incorrect

    A person id takes field gender (male|female) or age (an integer); a photo id
    `<person id>/<photo>` takes field mask (wear|incorrect|not_wear or 0|1|2), e.g.
    to undo the known swaps of incorrect_mask and normal photos. Ids that lost
    their leading zeros (a spreadsheet's doing) still match. Lines whose id starts
    with '#' and blank lines are skipped. An unknown id,
    field, photo or value raises ValueError naming the file and line.

Multi-head models
    `multihead_to_18` combines three heads (mask 3, gender 2, age 3 logits) into
    the 18 class probabilities; `multihead_log_probs_18` gives their logarithms,
    which a model wrapper can return as its "logits": softmax of them is exactly
    the product distribution, and cross-entropy on them equals the unweighted sum
    of the three heads' cross-entropies. `MultiHeadLoss` is the weighted version.

`make_mask_sample` writes a small synthetic dataset in exactly this layout (shapes
instead of faces) so the whole pipeline runs without the real data.
"""

from __future__ import annotations

import csv
import hashlib
import numbers
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pipeline.fileio import atomic_dir, write_csv_atomic

__all__ = [
    "MaskDataError",
    "N_CLASSES",
    "PHOTO_STEMS",
    "TRUE_AGE_CUTOFF",
    "TRAIN_COLUMNS",
    "age_group",
    "encode_class",
    "decode_class",
    "class_name",
    "read_relabel_file",
    "prepare_mask_data",
    "prepare_from_config",
    "multihead_to_18",
    "multihead_log_probs_18",
    "split_targets_18",
    "MultiHeadLoss",
    "make_mask_sample",
]


class MaskDataError(ValueError):
    """A problem in the competition's files: the message names the file, line or folder."""


N_CLASSES = 18
TRUE_AGE_CUTOFF = 60
YOUNG_CUTOFF = 30                      # under 30 is age group 0
PHOTO_STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASK_OF_STEM = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GENDERS = ("male", "female")
MASK_NAMES = ("wear", "incorrect", "not_wear")
AGE_GROUP_NAMES = ("<30", "30-59", ">=60")
TRAIN_COLUMNS = ["image", "label", "true_label", "group", "person_label", "mask", "gender", "age", "age_group"]
PEOPLE_COLUMNS = ["id", "gender", "age", "path"]
RELABEL_COLUMNS = ["id", "field", "value"]


# --------------------------------------------------------------------------- class encoding

def _check_code(name: str, value, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < n:
        raise ValueError(f"{name} must be an integer in 0..{n - 1}, got {value!r}")
    return int(value)


def age_group(age, cutoff: int = TRUE_AGE_CUTOFF) -> int:
    """Age group of `age` years: 0 under 30, 1 from 30 to cutoff - 1, 2 from `cutoff` on.

    >>> [age_group(a) for a in (18, 29, 30, 58, 59, 60, 70)]
    [0, 0, 1, 1, 1, 2, 2]
    >>> age_group(58, cutoff=58), age_group(57, cutoff=58)
    (2, 1)
    """
    if isinstance(age, bool) or not isinstance(age, numbers.Integral) or age < 0:
        raise ValueError(f"age must be a non-negative integer, got {age!r}")
    _check_cutoff(cutoff)
    return 0 if age < YOUNG_CUTOFF else (1 if age < cutoff else 2)


def _check_cutoff(cutoff) -> int:
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Integral) or cutoff <= YOUNG_CUTOFF:
        raise ValueError(f"age cut-off must be an integer above {YOUNG_CUTOFF} (the 30-59 group would be "
                         f"empty otherwise), got {cutoff!r}; the competition's is {TRUE_AGE_CUTOFF}")
    return int(cutoff)


def encode_class(mask: int, gender: int, age_group: int) -> int:
    """The competition's class: mask*6 + gender*3 + age_group.

    >>> encode_class(0, 0, 0), encode_class(1, 0, 1), encode_class(2, 1, 2)
    (0, 7, 17)
    """
    return (_check_code("mask", mask, 3) * 6 + _check_code("gender", gender, 2) * 3
            + _check_code("age_group", age_group, 3))


def decode_class(c: int) -> tuple[int, int, int]:
    """(mask, gender, age_group) of class `c`, the inverse of `encode_class`.

    >>> decode_class(0), decode_class(7), decode_class(17)
    ((0, 0, 0), (1, 0, 1), (2, 1, 2))
    >>> all(encode_class(*decode_class(c)) == c for c in range(18))
    True
    """
    c = _check_code("class", c, N_CLASSES)
    return c // 6, (c // 3) % 2, c % 3


def class_name(c: int) -> str:
    """A readable name for class `c`.

    >>> class_name(7)
    'incorrect/male/30-59'
    """
    m, g, a = decode_class(c)
    return f"{MASK_NAMES[m]}/{GENDERS[g]}/{AGE_GROUP_NAMES[a]}"


# --------------------------------------------------------------------------- parsing values

_INT = re.compile(r"^\+?\d+(\.0*)?$")


def _parse_age(text) -> int | None:
    """An age from a CSV cell, or None when it is not a non-negative integer.

    >>> _parse_age("54"), _parse_age(" 54.0 "), _parse_age("54.5"), _parse_age("x"), _parse_age("-3")
    (54, 54, None, None, None)
    """
    text = str(text).strip()
    return int(float(text)) if _INT.match(text) else None


def _parse_gender(text) -> int | None:
    """0 male, 1 female (names in any case, or the codes 0/1); None otherwise."""
    text = str(text).strip().lower()
    if text in GENDERS:
        return GENDERS.index(text)
    return int(text) if text in ("0", "1") else None


def _parse_mask(text) -> int | None:
    """0 wear, 1 incorrect, 2 not_wear (names, or the codes 0/1/2); None otherwise."""
    text = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"wear": 0, "mask": 0, "incorrect": 1, "incorrect_mask": 1, "not_wear": 2, "normal": 2}
    if text in aliases:
        return aliases[text]
    return int(text) if text in ("0", "1", "2") else None


# --------------------------------------------------------------------------- people and relabelling

def _read_people(train_csv: Path) -> pd.DataFrame:
    """train/train.csv as one row per person: id (str), gender (0/1), age (int), path, line."""
    if not train_csv.is_file():
        raise MaskDataError(f"{train_csv} not found: the competition's train/train.csv must lie under the "
                            "raw data folder (data.image_root)")
    try:
        raw = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise MaskDataError(f"{train_csv}: the file is empty; expected columns {PEOPLE_COLUMNS}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in PEOPLE_COLUMNS if c not in raw.columns]
    if missing:
        raise MaskDataError(f"{train_csv}: missing column(s) {missing}; found {list(raw.columns)}")
    if raw.empty:
        raise MaskDataError(f"{train_csv}: the file has a header but no rows")
    rows = []
    for i, rec in enumerate(raw.to_dict("records")):
        line = i + 2  # 1-based, after the header
        where = f"{train_csv} line {line}"
        pid, path = rec["id"].strip(), rec["path"].strip()
        if not pid:
            raise MaskDataError(f"{where}: blank id")
        gender = _parse_gender(rec["gender"])
        if gender is None:
            raise MaskDataError(f"{where} (id {pid}): gender {rec['gender']!r} is not 'male' or 'female'")
        age = _parse_age(rec["age"])
        if age is None:
            raise MaskDataError(f"{where} (id {pid}): age {rec['age']!r} is not a non-negative integer")
        if not path or "/" in path or "\\" in path or path in (".", ".."):
            raise MaskDataError(f"{where} (id {pid}): path {rec['path']!r} must be a single folder name "
                                "under train/images/")
        rows.append({"id": pid, "gender": gender, "age": age, "path": path, "line": line})
    people = pd.DataFrame(rows)
    for column in ("id", "path"):
        dup = people[people[column].duplicated(keep=False)]
        if not dup.empty:
            first = dup[column].iloc[0]
            lines = dup.loc[dup[column] == first, "line"].tolist()
            raise MaskDataError(f"{train_csv}: {column} {first!r} appears on lines {lines} "
                                f"({dup[column].nunique()} duplicated {column}(s) in all); "
                                f"every person needs a unique {column}")
    return people


def _resolve_id(pid: str, known: dict[str, int]) -> str | None:
    """Match a relabel id to a data id, tolerating lost leading zeros (Excel: 000020 → 20)."""
    if pid in known:
        return pid
    if pid.isdigit():
        same = [k for k in known if k.isdigit() and int(k) == int(pid)]
        if len(same) == 1:
            return same[0]
    return None


def read_relabel_file(path: str | Path, known_ids) -> tuple[dict, dict]:
    """Parse a relabel CSV (`id,field,value`) against the data's person ids.

    Returns ``(person_fixes, photo_fixes)``: ``{id: {"gender": 0|1, "age": int}}`` and
    ``{(id, photo_stem): mask}``. Raises ValueError naming the file and line for a
    missing column, an id not in the data, an unknown field or photo, a bad value,
    or two lines setting the same thing to different values.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskDataError(f"relabel file not found: {path} (mask.relabel_file)")
    known = {str(k): 1 for k in known_ids}
    person_fixes: dict[str, dict] = {}
    photo_fixes: dict[tuple[str, str], int] = {}
    seen: dict[tuple[str, str], tuple[object, int]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise MaskDataError(f"{path}: the relabel file is empty; expected a header {RELABEL_COLUMNS}")
        header = [h.strip().lower() for h in header]
        missing = [c for c in RELABEL_COLUMNS if c not in header]
        if missing:
            raise MaskDataError(f"{path} line 1: missing column(s) {missing}; found {header} "
                                f"(expected a header line 'id,field,value')")
        col = {c: header.index(c) for c in RELABEL_COLUMNS}
        for cells in reader:
            line = reader.line_num
            where = f"{path} line {line}"
            if not any(c.strip() for c in cells) or cells[0].strip().startswith("#"):
                continue
            if len(cells) < len(header):
                raise MaskDataError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {cells}")
            rid, field, value = (cells[col[c]].strip() for c in RELABEL_COLUMNS)
            field = field.lower()
            person, _, stem = rid.partition("/")
            resolved = _resolve_id(person.strip(), known)
            if resolved is None:
                raise MaskDataError(f"{where}: id {person!r} is not in the data's train.csv")
            if stem:
                if stem not in PHOTO_STEMS:
                    raise MaskDataError(f"{where}: photo {stem!r} in id {rid!r} is not one of {list(PHOTO_STEMS)}")
                if field != "mask":
                    raise MaskDataError(f"{where}: unknown field {field!r} for a photo id ({rid!r}); "
                                        "a photo id takes field 'mask' only")
                parsed = _parse_mask(value)
                if parsed is None:
                    raise MaskDataError(f"{where}: mask value {value!r} is not one of "
                                        f"{list(MASK_NAMES)} or 0/1/2")
                key = (resolved, stem)
            else:
                if field == "mask":
                    raise MaskDataError(f"{where}: field 'mask' needs a photo id such as "
                                        f"'{person}/incorrect_mask', got {rid!r}")
                if field not in ("gender", "age"):
                    raise MaskDataError(f"{where}: unknown field {field!r}; use gender or age with a person id, "
                                        "mask with a photo id (id/photo)")
                parsed = _parse_gender(value) if field == "gender" else _parse_age(value)
                if parsed is None:
                    want = "'male' or 'female'" if field == "gender" else "a non-negative integer"
                    raise MaskDataError(f"{where}: {field} value {value!r} is not {want}")
                key = (resolved, field)
            if key in seen and seen[key][0] != parsed:
                raise MaskDataError(f"{where}: {rid!r} {field} is set to {value!r} here but differently on "
                                    f"line {seen[key][1]}")
            seen[key] = (parsed, line)
            if stem:
                photo_fixes[key] = parsed
            else:
                person_fixes.setdefault(resolved, {})[field] = parsed
    return person_fixes, photo_fixes


# --------------------------------------------------------------------------- folders

def _person_photos(folder: Path, where: str, skipped: list[Path] | None = None) -> dict[str, str]:
    """{photo stem: file name} of the seven photos in a person's folder.

    Hidden files (`._mask1.jpg`, `.DS_Store`) and files that are not images are
    ignored (appended to `skipped`, so the caller can say how many); a missing photo,
    two files for one photo, or an image with an unknown name is an error naming the folder.
    """
    if not folder.is_dir():
        raise MaskDataError(f"person folder missing: {folder} ({where})")
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS or not (folder / name).is_file():
            if skipped is not None:
                skipped.append(folder / name)
            continue
        if stem not in MASK_OF_STEM:
            raise MaskDataError(f"{folder}: unexpected photo {name!r} ({where}); "
                                f"a person folder holds {', '.join(PHOTO_STEMS)}")
        if stem in found:
            raise MaskDataError(f"{folder}: two files for photo {stem!r}: {found[stem]!r} and {name!r} ({where}); "
                                "keep one")
        found[stem] = name
    missing = [s for s in PHOTO_STEMS if s not in found]
    if missing:
        raise MaskDataError(f"{folder}: missing photo(s) {missing} ({where}); expected "
                            f"{', '.join(PHOTO_STEMS)} with extension {'/'.join(IMAGE_EXTENSIONS)}")
    return found


# --------------------------------------------------------------------------- the train CSV

def prepare_mask_data(raw_root: str | Path, out_csv: str | Path, age_cutoff: int = TRUE_AGE_CUTOFF,
                      relabel_file: str | Path | None = None, log=print) -> Path:
    """Write the pipeline's train CSV (one row per image, columns `TRAIN_COLUMNS`) and return its path.

    Arguments:
        raw_root: the competition folder holding `train/train.csv` and `train/images/`;
            image paths in the output are relative to it (set `data.image_root` to it).
        out_csv: where to write; written atomically (a killed run leaves the old file).
        age_cutoff: the age from which TRAINING labels (`label`) say ">= 60"; `true_label`
            always uses 60.
        relabel_file: optional CSV `id,field,value` of label corrections (module docstring).
        log: told how many hidden or non-image files in the person folders were skipped.

    Rows follow train.csv's person order, then mask1..mask5, incorrect_mask, normal.
    """
    raw_root = Path(raw_root)
    age_cutoff = _check_cutoff(age_cutoff)
    people = _read_people(raw_root / "train" / "train.csv")
    person_fixes, photo_fixes = ({}, {}) if relabel_file is None else \
        read_relabel_file(relabel_file, people["id"].tolist())
    train_csv = raw_root / "train" / "train.csv"
    rows, skipped = [], []
    for person in people.to_dict("records"):
        pid = person["id"]
        fixes = person_fixes.get(pid, {})
        gender, age = fixes.get("gender", person["gender"]), fixes.get("age", person["age"])
        train_group, true_group = age_group(age, age_cutoff), age_group(age, TRUE_AGE_CUTOFF)
        photos = _person_photos(raw_root / "train" / "images" / person["path"],
                                f"{train_csv} line {person['line']}, id {pid}", skipped)
        for stem in PHOTO_STEMS:
            mask = photo_fixes.get((pid, stem), MASK_OF_STEM[stem])
            rows.append({
                "image": f"train/images/{person['path']}/{photos[stem]}",
                "label": encode_class(mask, gender, train_group),
                "true_label": encode_class(mask, gender, true_group),
                "group": pid,
                "person_label": gender * 3 + true_group,
                "mask": mask, "gender": gender, "age": age, "age_group": true_group,
            })
    out_csv = Path(out_csv)
    write_csv_atomic(out_csv, pd.DataFrame(rows, columns=TRAIN_COLUMNS), lineterminator="\n")
    if skipped:
        shown = ", ".join(str(p.relative_to(raw_root)) for p in skipped[:3])
        log(f"[mask] skipped {len(skipped)} hidden or non-image file(s) in the person folders "
            f"(e.g. {shown}{', ...' if len(skipped) > 3 else ''}); only {'/'.join(IMAGE_EXTENSIONS)} photos are used")
    return out_csv


def prepare_from_config(cfg, log=print) -> Path:
    """`prepare_mask_data` with a Config: raw root = data.image_root, output = data.train_csv."""
    out = prepare_mask_data(cfg.data.image_root, cfg.data.train_csv, cfg.mask.age_cutoff, cfg.mask.relabel_file,
                            log=log)
    table = pd.read_csv(out)
    moved = int((table["label"] != table["true_label"]).sum())
    counts = table["true_label"].value_counts().reindex(range(N_CLASSES), fill_value=0)
    log(f"[mask] {out}: {len(table)} images of {table['group'].nunique()} people; "
        f"age cut-off {cfg.mask.age_cutoff} moves {moved} training label(s) off the true label"
        + (f"; relabelled with {cfg.mask.relabel_file}" if cfg.mask.relabel_file else ""))
    log("[mask] images per true class: " + ", ".join(f"{c}:{n}" for c, n in counts.items()))
    return out


# --------------------------------------------------------------------------- multi-head math

_HEADS = (("mask", 3), ("gender", 2), ("age", 3))


def _check_heads(mask_logits, gender_logits, age_logits) -> None:
    for (name, n), t in zip(_HEADS, (mask_logits, gender_logits, age_logits)):
        if t.ndim != 2 or t.shape[1] != n:
            raise ValueError(f"{name} logits must have shape [B, {n}], got {tuple(t.shape)}")
    if not mask_logits.shape[0] == gender_logits.shape[0] == age_logits.shape[0]:
        raise ValueError("the three heads' logits must have the same batch size, got "
                         f"{mask_logits.shape[0]}, {gender_logits.shape[0]}, {age_logits.shape[0]}")


def multihead_log_probs_18(mask_logits, gender_logits, age_logits) -> torch.Tensor:
    """log P(class) [B, 18] = log_softmax(mask)[m] + log_softmax(gender)[g] + log_softmax(age)[a].

    Return these from a multi-head model wrapper as its logits: softmax of them is the
    product distribution, and cross-entropy on them is the sum of the heads' cross-entropies.
    """
    _check_heads(mask_logits, gender_logits, age_logits)
    lm, lg, la = (F.log_softmax(t.float(), dim=1) for t in (mask_logits, gender_logits, age_logits))
    return (lm[:, :, None, None] + lg[:, None, :, None] + la[:, None, None, :]).reshape(-1, N_CLASSES)


def multihead_to_18(mask_logits, gender_logits, age_logits) -> torch.Tensor:
    """Class probabilities [B, 18] from three heads: p[m*6 + g*3 + a] = p_mask[m] p_gender[g] p_age[a].

    >>> p = multihead_to_18(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 3))
    >>> tuple(p.shape), bool(torch.allclose(p.sum(1), torch.ones(2)))
    ((2, 18), True)
    """
    _check_heads(mask_logits, gender_logits, age_logits)
    pm, pg, pa = (F.softmax(t.float(), dim=1) for t in (mask_logits, gender_logits, age_logits))
    return (pm[:, :, None, None] * pg[:, None, :, None] * pa[:, None, None, :]).reshape(-1, N_CLASSES)


def split_targets_18(targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """18-class targets [B] → (mask, gender, age_group) targets, each [B].

    >>> [t.tolist() for t in split_targets_18(torch.tensor([0, 7, 17]))]
    [[0, 1, 2], [0, 0, 1], [0, 1, 2]]
    """
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be a 1-D integer tensor of classes, got {targets.dtype} {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= N_CLASSES):
        raise ValueError(f"targets must lie in 0..{N_CLASSES - 1}, got {targets.min().item()}..{targets.max().item()}")
    return targets // 6, (targets // 3) % 2, targets % 3


class MultiHeadLoss(torch.nn.Module):
    """Weighted sum of the mask, gender and age heads' cross-entropies.

    ``loss(outputs, targets)``: `outputs` is a dict with keys mask/gender/age or a
    (mask, gender, age) tuple of logits; `targets` the 18-class targets [B] or a
    (mask, gender, age) tuple. With weights (1, 1, 1) and no label smoothing it equals
    cross-entropy on `multihead_log_probs_18`.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0), label_smoothing: float = 0.0):
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be three non-negative numbers (mask, gender, age), got {weights}")
        self.weights = weights
        self.label_smoothing = float(label_smoothing)

    def forward(self, outputs, targets) -> torch.Tensor:
        if isinstance(outputs, dict):
            missing = [name for name, _ in _HEADS if name not in outputs]
            if missing:
                raise ValueError(f"model output dict lacks head(s) {missing}; has {sorted(outputs)}")
            heads = tuple(outputs[name] for name, _ in _HEADS)
        elif isinstance(outputs, (tuple, list)) and len(outputs) == 3:
            heads = tuple(outputs)
        else:
            raise ValueError("outputs must be a dict {mask, gender, age} or a (mask, gender, age) tuple of logits")
        _check_heads(*heads)
        parts = tuple(targets) if isinstance(targets, (tuple, list)) else split_targets_18(targets)
        return sum(w * F.cross_entropy(h.float(), t, label_smoothing=self.label_smoothing)
                   for w, h, t in zip(self.weights, heads, parts))


# --------------------------------------------------------------------------- synthetic sample

# Ages per age group, taken in turn by the people of each (gender, age group): the
# borderline 58/59/60 are among the first four, so the cut-off trick has cases.
_SAMPLE_AGES = ((25, 19, 29, 22, 27), (45, 58, 59, 30, 52), (60, 70, 61, 65, 80))
_MASK_COLOURS = ((236, 236, 236), (150, 190, 230), (40, 40, 45), (230, 170, 190), (150, 150, 150))
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # what `._name` junk files start with


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _hair_colour(age: int) -> tuple[int, int, int]:
    """Dark brown at 15 to light grey at 80: age is visible, continuously."""
    t = min(max((age - 15) / 65, 0.0), 1.0)
    return tuple(int(round(a + (b - a) * t)) for a, b in zip((45, 30, 20), (215, 215, 210)))


def _draw_person(size: tuple[int, int], person: dict, mask: str, rng: np.random.Generator) -> Image.Image:
    """A drawn 'photo': background, shoulders, hair (long for women), face, and the mask state.

    `mask` is a photo stem: mask1..5 draw a mask over the nose and mouth in one of five
    colours, incorrect_mask draws it low (nose out), normal draws none.
    """
    w, h = size
    img = Image.new("RGB", size, person["background"])
    d = ImageDraw.Draw(img)
    jx, jy = (float(v) for v in rng.uniform(-0.02, 0.02, size=2))
    cx, cy = w * (0.5 + jx), h * (0.47 + jy)
    rx, ry = 0.25 * w, 0.24 * h
    hair = _hair_colour(person["age"])
    d.polygon([(cx - 0.45 * w, h), (cx - 0.3 * w, cy + 0.3 * h), (cx + 0.3 * w, cy + 0.3 * h),
               (cx + 0.45 * w, h)], fill=person["clothes"])
    if person["gender"] == 1:  # long hair behind the face, down to the shoulders
        d.rounded_rectangle([cx - 1.2 * rx, cy - 1.15 * ry, cx + 1.2 * rx, cy + 1.35 * ry],
                            radius=int(0.4 * rx), fill=hair)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=person["skin"])
    d.chord([cx - 1.02 * rx, cy - 1.1 * ry, cx + 1.02 * rx, cy + 0.2 * ry], 180, 360, fill=hair)
    eye_y, eye_dx, er = cy - 0.08 * ry, 0.4 * rx, max(1.0, 0.08 * rx)
    for ex in (cx - eye_dx, cx + eye_dx):
        d.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], fill=(25, 25, 30))
    line = max(1, int(round(0.02 * w)))
    d.line([(cx, cy + 0.05 * ry), (cx - 0.08 * rx, cy + 0.3 * ry)], fill=(120, 80, 60), width=line)  # nose
    d.line([(cx - 0.3 * rx, cy + 0.55 * ry), (cx + 0.3 * rx, cy + 0.55 * ry)], fill=(170, 60, 60), width=line)
    if mask != "normal":
        colour = _MASK_COLOURS[int(mask[-1]) - 1] if mask.startswith("mask") else _MASK_COLOURS[person["mask_colour"]]
        top, bottom = (cy + 0.0 * ry, cy + 0.9 * ry) if mask != "incorrect_mask" else (cy + 0.42 * ry, cy + 1.1 * ry)
        d.rounded_rectangle([cx - 0.88 * rx, top, cx + 0.88 * rx, bottom], radius=int(0.15 * rx), fill=colour)
        for side in (-1, 1):  # ear loops
            d.line([(cx + side * 0.88 * rx, top + 0.1 * ry), (cx + side * rx, cy - 0.05 * ry)],
                   fill=colour, width=line)
    return img


def _save_photo(img: Image.Image, path: Path) -> None:
    if path.suffix.lower() == ".png":
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=90)


def _random_person(rng: np.random.Generator, gender: int, age: int) -> dict:
    def colour(lo, hi):
        return tuple(int(v) for v in rng.integers(lo, hi, size=3))
    skin = tuple(int(v) for v in np.array([225, 185, 150]) * rng.uniform(0.7, 1.05))
    return {"gender": gender, "age": age, "skin": tuple(min(255, s) for s in skin),
            # studio-like backgrounds and dark clothes vary little, so that hair, face
            # and mask, not a person's colours, carry the classes
            "background": tuple(int(v) for v in np.full(3, rng.integers(150, 200)) + rng.integers(-12, 13, 3)),
            "clothes": colour(30, 90),
            "mask_colour": int(rng.integers(len(_MASK_COLOURS)))}


def _write_sample(root: Path, n_people: int, n_eval: int, image_size: tuple[int, int], seed: int) -> None:
    plan, render, test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    # Person k gets (gender, age group) combination k % 6, so every combination has
    # n_people // 6 people or one more: 24 people give 4 per combination, enough for a
    # 3-fold split stratified on person_label with every class in every fold.
    specs = []
    for k in range(n_people):
        gender, group = divmod(k % 6, 3)
        ages = _SAMPLE_AGES[group]
        specs.append((gender, ages[(k // 6) % len(ages)]))
    order = plan.permutation(n_people)  # ids are handed out in a shuffled order: they reveal nothing
    ids = sorted(int(v) for v in plan.choice(np.arange(1, 7000), size=n_people, replace=False))
    exts = plan.choice([".jpg", ".jpeg", ".png"], size=(n_people, len(PHOTO_STEMS)), p=[0.7, 0.15, 0.15])
    exts[0, :3] = [".jpg", ".jpeg", ".png"]  # every extension occurs, whatever the seed
    images = root / "train" / "images"
    images.mkdir(parents=True)
    rows = []
    for row, k in enumerate(order):
        gender, age = specs[k]
        pid = f"{ids[row]:06d}"
        path = f"{pid}_{GENDERS[gender]}_Asian_{age}"
        folder = images / path
        folder.mkdir()
        person = _random_person(render, gender, age)
        for j, stem in enumerate(PHOTO_STEMS):
            _save_photo(_draw_person(image_size, person, stem, render), folder / f"{stem}{exts[row, j]}")
        if row % 5 == 0:  # macOS junk, as in the real archive
            (folder / "._mask1.jpg").write_bytes(_APPLEDOUBLE)
        rows.append({"id": pid, "gender": GENDERS[gender], "race": "Asian", "age": age, "path": path})
    pd.DataFrame(rows).to_csv(root / "train" / "train.csv", index=False, lineterminator="\n")

    (root / "eval" / "images").mkdir(parents=True)
    ids, truth = [], []
    for _ in range(n_eval):
        gender, group = int(test.integers(2)), int(test.integers(3))
        age = int(test.choice(_SAMPLE_AGES[group]))
        stem = PHOTO_STEMS[int(test.integers(len(PHOTO_STEMS)))]
        image_id = hashlib.sha1(test.bytes(16)).hexdigest() + ".jpg"
        _save_photo(_draw_person(image_size, _random_person(test, gender, age), stem, test),
                    root / "eval" / "images" / image_id)
        ids.append(image_id)
        truth.append(encode_class(MASK_OF_STEM[stem], gender, age_group(age)))
    pd.DataFrame({"ImageID": ids, "ans": ""}).to_csv(root / "eval" / "info.csv", index=False, lineterminator="\n")
    # Not part of the competition's layout: the sample's test truth, for `data.test_labels`.
    pd.DataFrame({"ImageID": ids, "ans": truth}).to_csv(root / "eval_truth.csv", index=False, lineterminator="\n")


def make_mask_sample(out_dir: str | Path, n_people: int = 24, seed: int = 0,
                     image_size: tuple[int, int] = (384, 512), n_eval: int = 24) -> Path:
    """Write a synthetic dataset in the competition's exact layout to `out_dir` (replacing it).

    `n_people` people (ids 6 digits, folder `<id>_<gender>_Asian_<age>`) with the seven
    photos each, mixed .jpg/.jpeg/.png, some `._mask1.jpg` junk files; `n_eval` test
    images `eval/images/<sha1>.jpg` listed in `eval/info.csv` with an empty `ans`. The
    test truth goes to `<out_dir>/eval_truth.csv` (outside the layout). Images are
    drawn shapes of `image_size` = (width, height): hair colour shows the age, long
    hair the gender, a rectangle the mask. The same arguments give identical files;
    the folder is written beside `out_dir` and renamed into place. Returns `out_dir`.
    """
    n_people = _check_int("n_people", n_people, 1)
    n_eval = _check_int("n_eval", n_eval, 1)
    seed = _check_int("seed", seed, 0)
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 16 for v in image_size)):
        raise ValueError(f"image_size must be (width, height) in pixels, each at least 16, got {image_size!r}")
    out = Path(out_dir)
    target = out.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir exists and is not a folder: {out_dir!r}")
    with atomic_dir(target) as tmp:
        _write_sample(tmp, n_people, n_eval, (int(image_size[0]), int(image_size[1])), seed)
    return out
