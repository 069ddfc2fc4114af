"""What the stages read from the data, in two small files Make can depend on.

Make compares timestamps, and a config stamp covers keys, not images: overwrite a test image and
the old predictions would look up to date. So every run of `resolve` (and of the data stage)
writes

    stamps/train_images.json   every training image: path, size and modification time
    stamps/test_images.json    the sample submission's ids, in order, and each id's image: the same

rewritten only when their content changes. The weights depend on the first, the test
predictions on the second: a changed, added or removed image (or a reordered sample submission)
reruns exactly what reads it. With `data.manifest: sha256` each entry also holds the file's
sha256, which catches content changed under an unchanged size and time (`cp -p`, `rsync -t`), at
the price of reading every image at every `make`.

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
           "train_fingerprint", "MANIFESTS"]

MANIFESTS = {"train": "train_images.json", "test": "test_images.json"}
_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def image_entries(paths, hashed: bool = False) -> list[list]:
    """``[path, size, mtime_ns]`` (plus sha256 when `hashed`) per image; size and time None when missing."""
    entries = []
    for path in map(str, paths):
        try:
            st = os.stat(path)
        except OSError:
            entries.append([path, None, None] + ([None] if hashed else []))
            continue
        entries.append([path, st.st_size, st.st_mtime_ns] + ([_sha256(path)] if hashed else []))
    return entries


def _unreadable(exc: Exception) -> dict:
    # The data check and the stages report bad CSVs properly; here the file only has to change
    # when the data is fixed.
    return {"unreadable": f"{type(exc).__name__}: {exc}"}


def train_manifest(cfg: Config) -> dict:
    """The training images as the stages will read them (`tables.read_train_table`)."""
    from pipeline.data.tables import read_train_table

    try:
        table = read_train_table(cfg)
    except (OSError, ValueError) as exc:
        return _unreadable(exc)
    return {"images": image_entries(table["image"], cfg.data.manifest == "sha256")}


def test_manifest(cfg: Config) -> dict:
    """The sample submission's ids in order and each id's image (`tables.read_test_table`)."""
    from pipeline.data.tables import read_test_table

    try:
        test = read_test_table(cfg)
    except (OSError, ValueError) as exc:
        return _unreadable(exc)
    return {"ids": test["id"].tolist(), "images": image_entries(test["image"], cfg.data.manifest == "sha256")}


def manifest_digest(manifest: dict) -> str:
    """A short hash of a manifest's content."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def write_manifests(cfg: Config) -> dict[str, Path]:
    """Write both manifests under ``<exp>/stamps/``, each only when its content changed."""
    stamps = cfg.exp_dir / "stamps"
    out = {}
    for what, build in (("train", train_manifest), ("test", test_manifest)):
        path = stamps / MANIFESTS[what]
        write_text_if_changed(path, json.dumps(build(cfg), indent=0) + "\n")
        out[what] = path
    return out


def train_fingerprint(cfg: Config) -> str:
    """The training config keys and the training images' manifest, as one short hash.

    A fold whose sidecar carries another fingerprint is not done; a checkpoint with another one
    is not resumed. With pseudo-labels, the list's content is part of it too.
    """
    from pipeline.data.pseudo_labels import pseudo_digest

    key = stage_fingerprint(cfg, "train") + manifest_digest(train_manifest(cfg)) + pseudo_digest(cfg)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
