"""pydantic's errors as one line per key: the dotted key, what is wrong, the value given."""

import difflib
import types
import typing
from typing import Annotated, Any, Union

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from pipeline.config.base import Broken, is_section, literal_choices
from pipeline.config.schema import Config

__all__ = ["problems"]


_TYPE_WORDS = {int: "int", float: "float", str: "str", bool: "bool", list: "a list", dict: "a mapping",
               type(None): "null"}


def _expected(tp: Any) -> str:
    """`str | list | None` -> 'str, a list or null' (`Float` is a float)."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    words = [_TYPE_WORDS.get(typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m, str(m))
             for m in members]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _range(field: FieldInfo) -> str:
    """A field's bounds as a rule: 'must be positive', 'must be at least 2', 'must be in [0, 1)'."""
    b = {k: getattr(m, k) for m in field.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    lo = f"[{b['ge']}" if "ge" in b else f"({b['gt']}" if "gt" in b else "(-inf"
    hi = f"{b['le']}]" if "le" in b else f"{b['lt']})" if "lt" in b else ""
    if hi:
        return f"must be in {lo}, {hi}"
    named = {"(0": "must be positive", "[0": "must be non-negative"}
    return named.get(lo) or f"must be {'at least' if lo[0] == '[' else 'greater than'} {lo[1:]}"


# Keys an earlier version read, with what replaced them: a config written for it gets told, not just refused.
_RETIRED = {"folds.leak_mads": "the leak rule is now relative to each image's neighbourhood; set "
                               "folds.leak_ratio (default 0.45, see docs/leaks.md) or remove the key"}


def _problem(err: dict) -> tuple[str, str]:
    """(dotted key, one line saying what is wrong) for one of pydantic's errors."""
    model, keys, field = Config, [], None
    for part in err["loc"]:               # down the sections; what follows a leaf key is pydantic's detail
        if model is None or part not in model.model_fields:
            break
        field = model.model_fields[part]
        keys.append(part)
        model = field.annotation if is_section(field.annotation) else None
    key, value, kind = ".".join(keys) or "config", err["input"], err["type"]
    if kind == "extra_forbidden":
        names = list(model.model_fields)
        unknown = ".".join([*keys, str(err["loc"][len(keys)])])
        if unknown in _RETIRED:
            return unknown, f"'{unknown}' is no longer a key: {_RETIRED[unknown]}"
        close = difflib.get_close_matches(str(err["loc"][len(keys)]), names, n=1)
        hint = f" Did you mean '{'.'.join([*keys, close[0]])}'?" if close else ""
        return unknown, f"unknown key '{unknown}'.{hint} Allowed keys here: {', '.join(names)}"
    if kind == "model_type":
        return key, f"{key}: expected a mapping of keys, got {value!r}"
    if kind == "literal_error":
        choices = ", ".join(map(str, literal_choices(field.annotation)))
        if isinstance(value, bool):      # an unquoted on/off/yes/no/true/false that no choice of this key means
            return key, (f"{key}: YAML reads an unquoted on/off/yes/no/true/false as {value!r}, which is not a "
                         f"choice of this key; write one of: {choices}")
        return key, f"{key}: '{value}' is not one of: {choices}"
    if kind.endswith("_type"):
        return key, f"{key}: expected {_expected(field.annotation)}, got {value!r} ({type(value).__name__})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return key, f"{key}: {_range(field)}; got {value!r}"
    broken = err.get("ctx", {}).get("error")
    if isinstance(broken, Broken):       # raised by the section at `key`
        key = ".".join([*keys, broken.key])
        return key, f"{key}: {broken.rule}; got {broken.value!r}"
    return key, f"{key}: {err['msg']}; got {value!r}"


def problems(exc: ValidationError) -> list[str]:
    """One line per key (a value that fails several union members is one problem)."""
    lines: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        key, line = _problem(err)
        lines.setdefault(key, line)
    return list(lines.values())
