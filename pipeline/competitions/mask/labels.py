"""The mask competition's 18 classes: class = mask*6 + gender*3 + age group, and the values behind them.

mask: 0 wear (mask1-5), 1 incorrect (incorrect_mask), 2 not wearing (normal); gender: 0 male,
1 female; age group: 0 under 30, 1 30-59, 2 60 and over.
"""

from __future__ import annotations

import numbers
import re

__all__ = ["MaskDataError", "N_CLASSES", "check_mask_classes", "PHOTO_STEMS", "TRUE_AGE_CUTOFF", "TRAIN_COLUMNS", "MASK_OF_STEM",
           "IMAGE_EXTENSIONS", "GENDERS", "MASK_NAMES", "age_group", "check_cutoff", "encode_class", "decode_class",
           "class_name", "parse_age", "parse_gender", "parse_mask"]


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

def check_mask_classes(classes) -> None:
    """The three-head model reads output k as the competition's class k: the data's classes must be '0'..'17'."""
    from pipeline.config import ConfigError

    if list(classes) != [str(c) for c in range(N_CLASSES)]:
        raise ConfigError(f"model.heads: 'mask' needs the classes '0'..'{N_CLASSES - 1}' (the competition's "
                          f"class codes) in the label column; the data has {list(classes)[:20]}")


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
    check_cutoff(cutoff)
    return 0 if age < YOUNG_CUTOFF else (1 if age < cutoff else 2)


def check_cutoff(cutoff) -> int:
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


def parse_age(text) -> int | None:
    """An age from a CSV cell, or None when it is not a non-negative integer.

    >>> parse_age("54"), parse_age(" 54.0 "), parse_age("54.5"), parse_age("x"), parse_age("-3")
    (54, 54, None, None, None)
    """
    text = str(text).strip()
    return int(float(text)) if _INT.match(text) else None


def parse_gender(text) -> int | None:
    """0 male, 1 female (names in any case, or the codes 0/1); None otherwise."""
    text = str(text).strip().lower()
    if text in GENDERS:
        return GENDERS.index(text)
    return int(text) if text in ("0", "1") else None


def parse_mask(text) -> int | None:
    """0 wear, 1 incorrect, 2 not_wear (names, or the codes 0/1/2); None otherwise."""
    text = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"wear": 0, "mask": 0, "incorrect": 1, "incorrect_mask": 1, "not_wear": 2, "normal": 2}
    if text in aliases:
        return aliases[text]
    return int(text) if text in ("0", "1", "2") else None
