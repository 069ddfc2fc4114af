"""Each image checked once: the data check's verdict on every image, kept while the file is unchanged.

Decoding 100,000 images takes the check ~20 s; `make folds`, `make train` and `make eda` would pay it
again at every call. So each verdict (:class:`pipeline.data.image_check.ImageResult`) is kept in
``<output_dir>/.stamps/image_checks.json`` with the file's size, mtime, ctime and inode, and reused
while all four are unchanged: the next stage stats each image (~6 us) instead of decoding it. A new
file, or a file written since (even one whose size and mtime were restored, as `cp -p` does: the
kernel moves its ctime, and rsync's copy is a new inode), is decoded again, so a broken image is
refused by the first stage that runs after it broke.

The file is shared by the experiments of one output folder (keys are absolute paths), written
atomically under a lock and merged with what other processes wrote meanwhile; `make clean` removes
it. It holds an entry per image ever checked there (~130 bytes each), and is never a Make
dependency: only the manifests (:mod:`pipeline.data.manifest`) decide what reruns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.data.image_check import ImageResult, inspect_all
from pipeline.fileio import locked, write_text_atomic

__all__ = ["Verdicts", "VERDICTS", "verdicts_path"]

VERDICTS = "image_checks.json"
_FORMAT = 1
_ENTRY_LENGTH = 11       # the file's four values, then `_entry`'s seven


def verdicts_path(cfg) -> Path:
    """Where the verdicts of `cfg`'s output folder are kept."""
    return Path(cfg.output_dir) / ".stamps" / VERDICTS


def _file_key(path: str) -> list[int] | None:
    """[size, mtime_ns, ctime_ns, inode] of the file a path names (links followed); None when it has none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else f"{cwd}/{path}"


class Verdicts:
    """The remembered verdicts of one output folder; `inspect` reuses them and records the new ones.

    ``Verdicts(None)`` remembers nothing and saves nothing (the check as a pure function).
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._known = self._load()
        self._new: dict[str, list] = {}
        self.reused = 0          # images whose verdict was reused by the last `inspect`

    def _load(self) -> dict[str, list]:
        if self.path is None:
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):     # none yet, or damaged: every image is decoded again
            return {}
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            return {}
        images = saved.get("images")
        return images if isinstance(images, dict) else {}

    def inspect(self, paths: list[str], n_jobs: int) -> tuple[list[ImageResult], str | None]:
        """`image_check.inspect_all(paths, n_jobs)`, decoding only the images not seen unchanged before."""
        cwd = os.getcwd()
        results: list[ImageResult | None] = [None] * len(paths)
        todo, keys = [], []
        for i, path in enumerate(paths):
            key = _file_key(path)
            known = self._known.get(_absolute(path, cwd)) if key is not None else None
            if known is not None and len(known) == _ENTRY_LENGTH and known[:4] == key:
                results[i] = _result(known[4:])
            else:
                todo.append(i)
                keys.append(key)
        self.reused = len(paths) - len(todo)
        decoded, crash = inspect_all([paths[i] for i in todo], n_jobs)
        if crash is not None:
            return [], crash
        for i, key, result in zip(todo, keys, decoded):
            results[i] = result
            if key is not None and self.path is not None:   # a file with no stat (missing) has nothing to keep
                self._new[_absolute(paths[i], cwd)] = key + _entry(result)
        return results, None

    def save(self) -> bool:
        """Write the verdicts found since loading (merged with the file as other processes left it);
        False when there was nothing new."""
        if self.path is None or not self._new:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path.with_name(f".{self.path.name}.lock"), f"the image verdicts {self.path}", log=None):
            self._known = {**self._load(), **self._new}
            write_text_atomic(self.path, json.dumps({"format": _FORMAT, "images": self._known}) + "\n")
        self._new = {}
        return True


def _entry(result: ImageResult) -> list:
    return [result.status, result.mode, result.detail, result.frames, result.rotated,
            *(result.size or (None, None))]


def _result(entry: list) -> ImageResult:
    status, mode, detail, frames, rotated, width, height = entry
    return ImageResult(status, mode, detail, frames, rotated, (width, height) if width is not None else None)
