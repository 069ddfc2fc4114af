"""The competition's folder layout → the pipeline's train CSV (one row per image).

The competition ships one row per *person* (`train/train.csv`: id, gender, race, age, path) and
seven photos per person under `train/images/<path>/`; `prepare_mask_data` writes one row per
photo with the columns `TRAIN_COLUMNS`: the training label (with the training-only age cut-off),
the true label (cut-off 60, what validation is scored on), the person as group, and the per-person
`person_label` that grouped folds are stratified on. The layout, the cut-off and the relabel file
are described in docs/mask.md.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from pipeline.competitions.mask.labels import (IMAGE_EXTENSIONS, MASK_NAMES, MASK_OF_STEM, N_CLASSES,
                                               PHOTO_STEMS, TRAIN_COLUMNS, TRUE_AGE_CUTOFF, MaskDataError, age_group,
                                               check_cutoff, encode_class, parse_age, parse_gender, parse_mask)
from pipeline.fileio import write_csv_atomic

__all__ = ["people_csv", "read_relabel_file", "prepare_mask_data", "prepare_from_config"]

PEOPLE_COLUMNS = ["id", "gender", "age", "path"]
RELABEL_COLUMNS = ["id", "field", "value"]


def people_csv(raw_root: str | Path) -> Path:
    """The competition's one-row-per-person table, ``<raw_root>/train/train.csv``."""
    return Path(raw_root) / "train" / "train.csv"


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
        gender = parse_gender(rec["gender"])
        if gender is None:
            raise MaskDataError(f"{where} (id {pid}): gender {rec['gender']!r} is not 'male' or 'female'")
        age = parse_age(rec["age"])
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
                parsed = parse_mask(value)
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
                parsed = parse_gender(value) if field == "gender" else parse_age(value)
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
    age_cutoff = check_cutoff(age_cutoff)
    train_csv = people_csv(raw_root)
    people = _read_people(train_csv)
    person_fixes, photo_fixes = ({}, {}) if relabel_file is None else \
        read_relabel_file(relabel_file, people["id"].tolist())
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
