"""Atomic file writes: a killed process never leaves a truncated file behind.

Every output of the pipeline goes through these helpers. They write to a
temporary file in the same folder and `os.replace` it into place, which is
atomic on POSIX file systems, so Make never sees a half-written target as done.
"""

from __future__ import annotations

import errno
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
    "OutputError",
    "atomic_path",
    "check_writable",
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


class OutputError(RuntimeError):
    """An output could not be written (a full disk, a read-only folder); the message names the file,
    says why and what to do. Whatever was complete before is still there."""


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}   # (a file in a folder's place)
# torch.save reports a failed write as RuntimeError("... file write failed") or "[enforce fail at
# inline_container.cc...] unexpected pos ...", safetensors as its own error with the OS message:
# all lose the errno, so their text is matched.
_FULL_TEXT = ("no space left", "disk quota", "file too large", "file write failed", "inline_container.cc")


def _out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return isinstance(exc, Exception) and any(t in str(exc).lower() for t in _FULL_TEXT)


def _free_bytes(folder: Path) -> int | None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _output_error(exc: BaseException, path: Path, written: int = 0) -> OutputError | None:
    """The OutputError explaining `exc` while writing `path`, or None when it is another kind of failure."""
    folder = path.parent
    if _out_of_space(exc):
        free = _free_bytes(folder)
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        elif free is not None and free < max(written, 2**20):   # the library lost the errno: look
            reason = "No space left on device"
        else:
            reason = "the write failed, as it does when the disk is full"
        room = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
        done = f", {written / 2**20:.1f} MiB written when it stopped" if written else ""
        return OutputError(
            f"cannot write {path}: {reason} ({room}{done}). Nothing finished was lost: every "
            "output is replaced only once complete, and a stopped fold resumes from its last completed epoch. "
            "Free some space (or point output_dir, folds.dir or data.cache_dir at a larger disk) and rerun "
            "the same command.")
    if isinstance(exc, OSError) and exc.errno in _READ_ONLY:
        return OutputError(f"cannot write in {folder}: {exc.strerror}. Make the folder writable, or point the "
                           "config at a writable one (output_dir, folds.dir, data.cache_dir).")
    return None


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    On an exception the temporary file is removed and `path` is left untouched, so the previous
    version of an output survives a failed rerun; a full disk or a read-only folder becomes an
    `OutputError` saying so. The file gets the permissions a plain `open()` would give it (0666
    less the umask), not the private 0600 of a temporary file, so collaborators on a shared
    volume can read the outputs.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as exc:
        raise (_output_error(exc, path) or exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())   # after the write: some writers (safetensors) recreate the file
        os.replace(tmp_path, path)
    except BaseException as exc:
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)
        explained = _output_error(exc, path, written)
        if explained is not None:
            raise explained from exc
        raise


def check_writable(folder: str | Path) -> None:
    """Raise OutputError now when `folder` cannot be created or written, before any work starts."""
    with atomic_path(Path(folder) / ".write-test") as tmp:
        tmp.write_bytes(b"")
    (Path(folder) / ".write-test").unlink(missing_ok=True)


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
    check_writable(lock_path.parent)   # a read-only or full folder: one clear line, before any work
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
        try:   # who holds it, for the message of a second process (best effort: a full disk must not stop us)
            fh.seek(0)
            fh.truncate()
            fh.write(f"process {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})\n")
            fh.flush()
        except OSError:
            pass
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def folder_lock(folder: str | Path, what: str, log: Callable[[str], object] | None = print):
    """`locked` on ``<folder>/.lock``: the writer of a folder's files (a fold, an experiment)."""
    return locked(Path(folder) / ".lock", what, log)
