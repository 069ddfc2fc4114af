"""How a competition lays out its images, turned into the one form every stage reads: a CSV per side.

Three layouts beside a CSV of image paths:

* ids and a template (``data.train_image_template`` / ``data.test_image_template``): a row's image is
  the template filled with its id, ``train/{id}.jpg``; a template ending in ``{id}`` (no extension)
  finds each image's extension by looking in its folder (`TemplatePaths`): one file ``<id>.<ext>``
  is that image, none or several is an error naming the id.
* class folders (``data.layout: folders``): ``<image_root>/<class_folders>/<class>/<image>``; the class
  is the folder's name, exact text. `write_layout_files` lists them into ``data.train_csv`` (a path
  under ``<output_dir>/lists/`` the config derives), so the data check, the manifests, the folds and
  Make's staleness see an ordinary train CSV, rewritten only when an image is added, removed or renamed.
* no sample submission (``data.sample_submission: null``): the folder of ``data.test_image_template``
  (``test/{id}``) is listed into one, with the file names as ids and an empty target column.

Light on purpose (no torch, no image decoding): `resolve` runs it at Make's parse time.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config

__all__ = ["IMAGE_EXTENSIONS", "LayoutError", "TemplateError", "ImageNotFound", "SeveralImages", "TemplatePaths",
           "is_image_name", "image_names", "class_folder_rows", "listed_test_ids", "write_layout_files"]

# File names counted as images when a folder is listed (compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class LayoutError(ValueError):
    """The images are not where the layout says: the message names the folder, the id or the key."""


class TemplateError(LayoutError):
    """A template that cannot be filled in with an id."""


class ImageNotFound(LayoutError):
    """No file for an id whose extension is found by looking."""


class SeveralImages(LayoutError):
    """Several files for an id whose extension is found by looking."""


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension (`._x.jpg` and `.DS_Store` are not images)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_names(folder: str | Path) -> list[str]:
    """The image files directly in `folder`, sorted (no sub-folders)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_name(e.name) and e.is_file())


class TemplatePaths:
    """Image paths (relative to their root) from ids through a template such as ``train/{id}.jpg``.

    A template that ends in ``{id}`` makes ``train/<id>``; when that has no image extension, the
    extension is found by looking: the folder is listed once, and the one file ``<id>.<ext>`` (any
    case of an extension in IMAGE_EXTENSIONS) is the image. A file named exactly ``<id>`` is taken as
    it is. Paths that would leave the root are returned untouched, unlisted: `tables.safe_join`
    refuses them.
    """

    def __init__(self, root: str | Path, template: str, key: str):
        self.root, self.template, self.key = Path(root), template, key
        self.looks = template.endswith("{id}")
        self._folders: dict[str, tuple[set[str], dict[str, list[str]]]] = {}

    def rel(self, value) -> str:
        """The image path of one id; TemplateError, ImageNotFound or SeveralImages (naming the id) otherwise."""
        try:
            rel = self.template.format(id=value)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise TemplateError(f"{self.key} {self.template!r} cannot be filled in ({type(exc).__name__}: {exc}); "
                                "it must contain '{id}' and no other braces, e.g. 'test/{id}.png'") from None
        if not self.looks or rel.lower().endswith(IMAGE_EXTENSIONS) or not _stays_inside(rel):
            return rel
        folder, name = os.path.split(rel)
        files, by_stem = self._listing(folder)
        if name in files:
            return rel
        found = by_stem.get(name, [])
        if len(found) == 1:
            return os.path.join(folder, found[0])
        where = self.root / (folder or ".")
        if not found:
            raise ImageNotFound(f"id {value!r}: no image {name}.<ext> in {where} ({self.key} {self.template!r} "
                                f"looks for the extensions {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)})")
        raise SeveralImages(f"id {value!r}: {len(found)} images in {where} could be it ({', '.join(found)}); "
                            f"keep one, or write the extension into {self.key} (e.g. "
                            f"{self.template[:-4] + '{id}' + os.path.splitext(found[0])[1]!r})")

    def _listing(self, folder: str) -> tuple[set[str], dict[str, list[str]]]:
        """Every file name in `folder`, and the images by their name without the extension (listed once)."""
        if folder not in self._folders:
            try:
                names = set(os.listdir(self.root / folder))
            except OSError:
                names = set()
            by_stem: dict[str, list[str]] = {}
            for name in sorted(names):
                if is_image_name(name):
                    by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
            self._folders[folder] = (names, by_stem)
        return self._folders[folder]


def _stays_inside(rel: str) -> bool:
    return not PurePath(rel).is_absolute() and ".." not in PurePath(rel).parts


# ---- class folders ---------------------------------------------------------------------------------

def class_folder_rows(image_root: str | Path, class_folders: str) -> list[tuple[str, str]]:
    """``(image path relative to image_root, class)`` of every image in ``<image_root>/<class_folders>/<class>/``.

    Sorted by class, then file name. The class is the folder's name exactly (spaces, leading zeros).
    Hidden folders are skipped; images in sub-folders of a class folder are not used. Raises
    LayoutError naming the folder when there is no class folder, or a class folder holds no image.
    """
    top = Path(image_root) / class_folders
    if not top.is_dir():
        raise LayoutError(f"data.layout: folders: {top} is not a folder (data.image_root / data.class_folders); "
                          "it must hold one folder per class")
    with os.scandir(top) as entries:
        classes = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    if not classes:
        raise LayoutError(f"data.layout: folders: {top} holds no class folder; expected {top}/<class>/<image>")
    rows, empty = [], []
    for name in classes:
        images = image_names(top / name)
        if not images:
            empty.append(name)
        prefix = "" if class_folders in ("", ".") else f"{class_folders.rstrip('/')}/"
        rows += [(f"{prefix}{name}/{image}", name) for image in images]
    if empty:
        nested = [n for n in empty if _has_folders(top / n)]
        hint = (f" {nested[0]!r} holds folders: is {top / nested[0]} the folder of classes (data.class_folders)?"
                if nested else " Remove them or add images.")
        raise LayoutError(f"data.layout: folders: {len(empty)} class folder(s) of {top} hold no image "
                          f"({', '.join(map(repr, empty[:10]))}{' ...' if len(empty) > 10 else ''}).{hint}")
    return rows


def _has_folders(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_dir() for e in entries)


def listed_test_ids(root: str | Path, template: str) -> list[str]:
    """The file names of the images in the folder of a ``<folder>/{id}`` template, sorted: the test ids."""
    folder = Path(root) / (template[:-len("{id}")] or ".")
    if not folder.is_dir():
        raise LayoutError(f"data.sample_submission: null lists the test images of {folder}, which is not a "
                          "folder (data.test_root or data.image_root, and data.test_image_template)")
    ids = image_names(folder)
    if not ids:
        raise LayoutError(f"data.sample_submission: null lists the test images of {folder}, and it holds none")
    return ids


def _csv_text(header: list[str], rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_layout_files(cfg: Config) -> list[Path]:
    """Write the CSVs the layout asks the pipeline to write (train list, sample submission), each only when
    its content changed, so Make sees a new, removed or renamed image and nothing else. Returns them."""
    from pipeline.fileio import write_text_if_changed

    d, written = cfg.data, []
    if d.layout == "folders":
        rows = class_folder_rows(d.image_root, d.class_folders)
        write_text_if_changed(d.train_csv, _csv_text([d.image_column, d.label_column], rows))
        written.append(Path(d.train_csv))
    if Path(d.sample_submission) == cfg.derived_sample_file:
        ids = listed_test_ids(d.test_root or d.image_root, d.test_image_template)
        write_text_if_changed(d.sample_submission, _csv_text([d.id_column, d.target_column], ((i, "") for i in ids)))
        written.append(Path(d.sample_submission))
    return written
