"""What the stages read from the data, in two small files Make can depend on.

Make compares timestamps, and a config stamp covers keys, not images: overwrite a test image and
the old predictions would look up to date. So every run of `resolve` (and of the data stage)
writes

    stamps/train_images.json   every training image: path, size and modification time
    stamps/test_images.json    the sample submission's ids, in order, and each id's image: the same

rewritten only when their content changes. The weights depend on the first, the test
predictions on the second: a changed, added or removed image (or a reordered sample submission)
reruns exactly what reads it. With `data.manifest: sha256` each entry also holds the file's
sha256, which catches content changed under an unchanged size and time (`cp -p`, `rsync -t`).

Cost. A call with nothing changed is one `stat` per image (~6 us here) and no image opened: the
paths are checked against the root once per folder (`tables.RootGuard`), and the sha256s are
remembered in ``stamps/sha256_memory.json`` with each file's size, times and inode, so only a file
whose size, mtime, ctime or inode moved is read again. The ctime and inode are what keep `sha256`
worth having: `cp -p` and `rsync -t` restore the mtime, but neither can restore the ctime (the
kernel sets it on every write) nor the inode (rsync writes a new file), so their copies are hashed
again. They are kept out of the manifests themselves: a `chmod` or a hard link would otherwise
look like new pixels to Make and retrain everything.

`train_fingerprint` folds the training images into the training fingerprint that fold sidecars
and resumable checkpoints carry, so a fold trained on other pixels is neither skipped as done nor
resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.config import Config
from pipeline.stamps import stage_fingerprint
from pipeline.fileio import write_text_if_changed

__all__ = ["image_entries", "train_manifest", "test_manifest", "write_manifests", "manifest_digest",
           "train_fingerprint", "manifest_text", "MANIFESTS", "SHA256_MEMORY"]

MANIFESTS = {"train": "train_images.json", "test": "test_images.json"}
SHA256_MEMORY = "sha256_memory.json"
_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def image_entries(paths, hashed: bool = False, memory: dict | None = None) -> list[list]:
    """``[path, size, mtime_ns]`` (plus sha256 when `hashed`) per image; size and time None when missing.

    `memory` ({path: [size, mtime_ns, ctime_ns, inode, sha256]}, see `_remembered_hashes`) gives the
    sha256 of a file whose four values are unchanged without reading it; the entries of the files
    hashed now are added to it.
    """
    memory = {} if memory is None else memory
    entries = []
    for path in map(str, paths):
        try:
            st = os.stat(path)
        except OSError:
            entries.append([path, None, None, None] if hashed else [path, None, None])
            continue
        if not hashed:
            entries.append([path, st.st_size, st.st_mtime_ns])
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = memory.get(path)
        if not isinstance(known, list) or len(known) != 5 or known[:4] != key:   # new, changed or damaged
            known = memory[path] = key + [_sha256(path)]
        entries.append([path, st.st_size, st.st_mtime_ns, known[4]])
    return entries


def _memory_path(cfg: Config) -> Path:
    return cfg.exp_dir / "stamps" / SHA256_MEMORY


def _remembered_hashes(cfg: Config) -> dict:
    """The sha256s of the last `write_manifests`, by path; empty when there are none (or unreadable)."""
    try:
        memory = json.loads(_memory_path(cfg).read_text())
    except (OSError, ValueError):
        return {}
    return memory if isinstance(memory, dict) else {}


def _unreadable(exc: Exception) -> dict:
    # The data check and the stages report bad CSVs properly; here the file only has to change
    # when the data is fixed.
    return {"unreadable": f"{type(exc).__name__}: {exc}"}


def train_manifest(cfg: Config, table=None, memory: dict | None = None) -> dict:
    """The training images as the stages will read them (`tables.read_train_table`, or `table`, its result)."""
    from pipeline.data.tables import read_train_table

    if table is None:
        try:
            table = read_train_table(cfg)
        except (OSError, ValueError) as exc:
            return _unreadable(exc)
    hashed = cfg.data.manifest == "sha256"
    return {"images": image_entries(table["image"].tolist(), hashed, _memory_for(cfg, hashed, memory))}


def test_manifest(cfg: Config, memory: dict | None = None) -> dict:
    """The sample submission's ids in order and each id's image (`tables.read_test_table`)."""
    from pipeline.data.tables import read_test_table

    try:
        test = read_test_table(cfg)
    except (OSError, ValueError) as exc:
        return _unreadable(exc)
    hashed = cfg.data.manifest == "sha256"
    return {"ids": test["id"].tolist(),
            "images": image_entries(test["image"].tolist(), hashed, _memory_for(cfg, hashed, memory))}


def _memory_for(cfg: Config, hashed: bool, memory: dict | None) -> dict | None:
    if not hashed:
        return None
    return memory if memory is not None else _remembered_hashes(cfg)


def manifest_text(manifest: dict) -> str:
    """``json.dumps(manifest, indent=0)`` + newline, built ~10x faster for the usual shapes.

    The text must stay byte for byte what it always was: a manifest whose text changes makes Make
    rerun every stage that reads the images. The pure-Python encoder that `indent` selects costs
    ~1.5 s for 100,000 images, more than the rest of a call that changed nothing.
    """
    if set(manifest) - {"ids", "images"} or not all(isinstance(v, list) for v in manifest.values()):
        return json.dumps(manifest, indent=0) + "\n"
    parts = [f"{json.dumps(key)}: {_list_text(values)}" for key, values in manifest.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"


_SCALARS = {str, int, float, bool, type(None)}


def _list_text(values: list) -> str:
    """`json.dumps(values, indent=0)` for a list of scalars or of non-empty lists of scalars."""
    if not values:
        return "[]"
    types = {type(v) for v in values}
    flat = types <= _SCALARS
    rows = types == {list} and all(values) and {type(x) for v in values for x in v} <= _SCALARS
    if not (flat or rows):
        return json.dumps(values, indent=0)
    # The C encoder with ",<newline>" between items; the newlines inside "[ ]" that indent=0 adds are
    # put in after. The text "],<newline>[" occurs only between rows: JSON strings hold no raw newline.
    text = json.dumps(values, separators=(",\n", ": "))
    if flat:
        return "[\n" + text[1:-1] + "\n]"
    return "[\n[\n" + text[2:-2].replace("],\n[", "\n],\n[\n") + "\n]\n]"


def manifest_digest(manifest: dict) -> str:
    """A short hash of a manifest's content."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def write_manifests(cfg: Config, train_table=None) -> dict[str, Path]:
    """Write both manifests under ``<exp>/stamps/``, each only when its content changed.

    `train_table`: `tables.read_train_table(cfg)` when the caller has already read it.
    """
    stamps = cfg.exp_dir / "stamps"
    hashed = cfg.data.manifest == "sha256"
    memory = _remembered_hashes(cfg) if hashed else None
    manifests = {"train": train_manifest(cfg, train_table, memory), "test": test_manifest(cfg, memory)}
    out = {}
    for what, manifest in manifests.items():
        out[what] = stamps / MANIFESTS[what]
        write_text_if_changed(out[what], manifest_text(manifest))
    if hashed:      # only the files named now: a renamed image's old entry is not kept forever
        named = {entry[0] for m in manifests.values() for entry in m.get("images", [])}
        write_text_if_changed(_memory_path(cfg), json.dumps({p: memory[p] for p in sorted(named) if p in memory}) + "\n")
    return out


def train_fingerprint(cfg: Config) -> str:
    """The training config keys and the training images' manifest, as one short hash.

    A fold whose sidecar carries another fingerprint is not done; a checkpoint with another one
    is not resumed. With pseudo-labels, the list's content is part of it too.
    """
    from pipeline.data.pseudo_labels import pseudo_digest

    key = stage_fingerprint(cfg, "train") + manifest_digest(train_manifest(cfg)) + pseudo_digest(cfg)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
