"""Atomic file writes: a killed process never leaves a truncated file behind.

Every output of the pipeline goes through these helpers. They write to a
temporary file in the same folder and `os.replace` it into place, which is
atomic on POSIX file systems, so Make never sees a half-written target as done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_text_atomic",
    "write_text_if_changed",
    "write_json_atomic",
    "write_csv_atomic",
    "file_sha256",
    "read_text_csv",
    "read_table",
    "TEXT_COLUMNS",
    "locked",
    "folder_lock",
]

# Columns of the pipeline's own CSVs (folds file, oof/test probabilities, submission) that hold
# labels, ids, groups or paths: always read back as the exact text that was written.
TEXT_COLUMNS = ("id", "label", "true_label", "image", "group", "class")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    On an exception the temporary file is removed and `path` is left untouched,
    so the previous version of an output survives a failed rerun.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (e.g. the folds file: recorded by training, compared by blending)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_text_csv(path: str | Path) -> pd.DataFrame:
    """Every cell as the exact text in the file: no type guessing and no missing values.

    `01` stays `01` (not 1), `true` stays `true`, `1e3` stays `1e3`, and `NA`, `None` and
    `nan` are text like any other (an empty cell is the empty string).
    """
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_table(path: str | Path, text=TEXT_COLUMNS) -> pd.DataFrame:
    """One of the pipeline's own CSVs: the `text` columns exactly as written, the others parsed
    (probabilities as floats, row and fold numbers as integers)."""
    return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """Write only when the content differs, so the file's mtime moves only on a real change.

    Make compares timestamps; stamps written this way make it rerun exactly the
    stages whose configuration changed. Returns True when the file was written.
    """
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | Path, frame: pd.DataFrame, **to_csv_kwargs) -> None:
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, **to_csv_kwargs)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty temporary folder beside `path`; on success swap it in for `path`.

    The folder version of `atomic_path`: on an exception the temporary folder is removed
    and `path` (the previous complete folder, if any) is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run with our pid; nobody else writes it
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished `new` folder to `out`, replacing any existing `out`.

    The old folder is renamed away before the new one is renamed in, so `out` is
    always either the complete old dataset, the complete new one, or (for an
    instant) absent; never a mixture. If the swap fails, the old one is restored.
    """
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)  # left by a killed run of ours with the same pid
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- one writer at a time ------------------------------------------------------------------------

@contextmanager
def locked(lock_path: str | Path, what: str, log: Callable[[str], object] | None = print) -> Iterator[None]:
    """Run the block while holding an exclusive lock on `lock_path` (POSIX flock).

    A second process asking for the same lock waits for the first to finish, after saying once
    which process holds it (`what` names the thing, e.g. "fold 0 of outputs/demo"), so two runs
    of one stage never write the same files at once. The lock file records its holder (pid, host,
    start time, command); the kernel releases the lock when the holder exits, even when killed,
    so a stale lock file never blocks. Where fcntl does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:   # pragma: no cover - Windows
        yield
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if log is not None:
                log(f"[lock] {what} is in use by {holder}; waiting for it to finish "
                    f"(Ctrl-C stops this run; the other one goes on)")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                 f"({' '.join(sys.argv)[:200]})\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def folder_lock(folder: str | Path, what: str, log: Callable[[str], object] | None = print):
    """`locked` on ``<folder>/.lock``: the writer of a folder's files (a fold, an experiment)."""
    return locked(Path(folder) / ".lock", what, log)
