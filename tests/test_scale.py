"""What a stage costs grows with what changed: a call with nothing to do opens no image, each image is
decoded by one check and its verdict reused until the file changes, and the folds stage opens none.

The costs themselves are measured by `make bench-scale` (pipeline/tools/bench_scale.py), not here.
"""

from __future__ import annotations

import builtins
import io
import json
import os

import pytest
from PIL import Image

from pipeline import stages
from pipeline.config import load_config
from pipeline.data.manifest import manifest_text
from pipeline.data.tables import DataError
from pipeline.data.verdicts import Verdicts, verdicts_path
from tests.test_check import _dataset, _image


@pytest.fixture
def opened(monkeypatch):
    """The files opened for reading from now on (builtins/io.open and PIL.Image.open), as absolute paths."""
    seen: list[str] = []
    real_open, real_image_open = builtins.open, Image.open

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and "r" in mode:
            seen.append(os.path.abspath(file))
        return real_open(file, mode, *args, **kwargs)

    def spy_image_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):
            seen.append(os.path.abspath(fp))
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(Image, "open", spy_image_open)
    return seen


def _images_in(paths: list[str], root) -> set[str]:
    root = os.path.abspath(root)
    return {p for p in paths if p.startswith(root + os.sep) and p.endswith(".png")}


def _junk_keeping_size_and_time(path) -> None:
    """Overwrite an image with junk of the same size and restore its mtime (as `cp -p` leaves a file)."""
    st = path.stat()
    path.write_bytes(b"\x00junk" * (st.st_size // 5) + b"\x00" * (st.st_size % 5))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- a call with nothing to do ------------------------------------------------------------------

@pytest.mark.parametrize("manifest", ["stat", "sha256"])
def test_a_resolve_that_changed_nothing_opens_no_image(tmp_path, opened, manifest):
    root, raw = _dataset(tmp_path)
    raw["data"]["manifest"] = manifest
    cfg = load_config(None, raw)
    stages.resolve(cfg, make_vars=True)
    first = _images_in(opened, root)
    opened.clear()
    stages.resolve(cfg, make_vars=True)
    assert _images_in(opened, root) == set()
    # The first call of sha256 reads each image once; stat reads only the headers of the size warning's sample
    # (pipeline.data.sizes: at most 8 training images, evenly spaced), however many images there are.
    if manifest == "sha256":
        assert len(first) == 9
    else:
        assert 0 < len(first) <= 8 and all(os.sep + "train" + os.sep in p for p in first)


def test_sha256_manifests_read_again_only_the_image_that_changed(tmp_path, opened):
    root, raw = _dataset(tmp_path)
    raw["data"]["manifest"] = "sha256"
    cfg = load_config(None, raw)
    stages.resolve(cfg)
    manifest = cfg.exp_dir / "stamps" / "train_images.json"
    before = manifest.read_text()
    changed = root / "train" / "dog_1.png"
    _junk_keeping_size_and_time(changed)
    opened.clear()
    stages.resolve(cfg)
    assert _images_in(opened, root) == {str(changed)}
    assert manifest.read_text() != before          # the new content is seen under the old size and time


def test_the_manifest_text_is_what_json_indent_0_writes():
    """The manifests' text is kept byte for byte (a changed text would retrain every finished run)."""
    for manifest in [{"images": []}, {"ids": [], "images": []},
                     {"images": [["data/a.png", 12, 1700000000123456789], ["b \"é\\\n],\n[", None, None]]},
                     {"ids": ["0001", "NA", "x\u2603"], "images": [["p", 1, 2, "ab12"], ["q", None, None, None]]},
                     {"unreadable": "DataError: train.csv: missing column(s) ['image']"}]:
        assert manifest_text(manifest) == json.dumps(manifest, indent=0) + "\n"


# ---- each image checked once --------------------------------------------------------------------

def test_the_folds_stage_opens_no_image_after_a_check(tmp_path, opened):
    root, raw = _dataset(tmp_path, grouped=True)
    cfg = load_config(None, raw)
    stages.check(cfg, n_jobs=1, log=lambda *_: None)
    assert len(_images_in(opened, root)) == 9       # the check decoded every image
    opened.clear()
    stages.folds(cfg, log=lambda *_: None)
    assert cfg.folds_file.is_file()
    assert _images_in(opened, root) == set()


def test_a_second_check_decodes_only_the_new_image(tmp_path, opened):
    root, raw = _dataset(tmp_path)
    cfg = load_config(None, raw)
    stages.check(cfg, n_jobs=1, log=lambda *_: None)
    new = _image(root / "train" / "cat_3.png", seed=77)
    (root / "train.csv").write_text((root / "train.csv").read_text() + "train/cat_3.png,cat\n")
    opened.clear()
    lines = []
    stages.check(cfg, n_jobs=1, log=lines.append)
    assert _images_in(opened, root) == {str(new)}
    assert "10 images checked, 9 of them unchanged since an earlier check" in lines[0]


@pytest.mark.parametrize("stage", ["folds", "train"])
def test_an_image_broken_after_a_good_check_is_refused_by_the_next_stage(tmp_path, stage):
    root, raw = _dataset(tmp_path)
    cfg = load_config(None, raw)
    stages.check(cfg, n_jobs=1, log=lambda *_: None)
    broken = root / "train" / "cat_2.png"
    _junk_keeping_size_and_time(broken)          # what a size-and-mtime memory could not see
    run = {"folds": lambda: stages.folds(cfg, log=lambda *_: None), "train": lambda: stages.train(cfg)}[stage]
    with pytest.raises(DataError, match="cat_2.png is not an image PIL can read"):
        run()
    assert not cfg.folds_file.exists() and not cfg.fold_dir(0).exists()


def test_an_image_broken_after_the_folds_is_refused_by_the_eda(tmp_path):
    root, raw = _dataset(tmp_path)
    cfg = load_config(None, raw)
    stages.folds(cfg, log=lambda *_: None)         # checks every image (no `make check` before it)
    _junk_keeping_size_and_time(root / "train" / "dog_0.png")
    with pytest.raises(DataError, match="dog_0.png is not an image PIL can read"):
        stages.eda(cfg, log=lambda *_: None)
    assert not (cfg.exp_dir / "eda" / "index.html").exists()


def test_verdicts_written_by_two_processes_are_merged(tmp_path):
    root, _ = _dataset(tmp_path)
    store = tmp_path / "outputs" / ".stamps" / "image_checks.json"
    cats = [str(root / "train" / f"cat_{k}.png") for k in range(3)]
    dogs = [str(root / "train" / f"dog_{k}.png") for k in range(3)]
    first, second = Verdicts(store), Verdicts(store)      # both loaded before either saved
    first.inspect(cats, n_jobs=1)
    second.inspect(dogs, n_jobs=1)
    assert first.save() and second.save()
    again = Verdicts(store)
    results, _ = again.inspect(cats + dogs, n_jobs=1)
    assert again.reused == 6 and {r.status for r in results} == {"ok"}


def test_a_damaged_verdict_file_means_checking_again(tmp_path):
    root, raw = _dataset(tmp_path)
    cfg = load_config(None, raw)
    path = verdicts_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "images": {"' + str(root / "train" / "cat_0.png") + '": [1, 2]}}')
    lines = []
    stages.check(cfg, n_jobs=1, log=lines.append)
    assert "unchanged since an earlier check" not in lines[0]
    assert json.loads(path.read_text())["format"] == 1


# ---- the benchmark's generated data -------------------------------------------------------------

@pytest.mark.parametrize("kind, n, shape", [("png", 300, (28, 28)), ("jpeg", 100, (512, 384))])
def test_a_generated_set_passes_the_check_and_is_written_once(tmp_path, kind, n, shape):
    from pipeline.tools.scale_data import write_image_set

    root = write_image_set(tmp_path / "set", n, kind=kind, n_jobs=1, log=lambda *_: None)
    ext = "png" if kind == "png" else "jpg"
    raw = {"output_dir": str(tmp_path / "outputs"), "folds": {"n_splits": 2, "dir": str(tmp_path / "folds")},
           "data": {"train_csv": str(root / "train.csv"), "image_root": str(root), "group_column": "group",
                    "sample_submission": str(root / "sample_submission.csv"), "id_column": "id",
                    "target_column": "label", "test_image_template": "test/{id}." + ext}}
    from pipeline.data.check import check_data
    report = check_data(load_config(None, raw), n_jobs=1)
    assert report.ok, report.format()
    assert (report.train_rows, report.test_rows) == (n, n // 10)
    with Image.open(root / "train" / f"0000007.{ext}") as img:
        assert img.size == shape
    before = (root / "train.csv").stat().st_mtime_ns
    write_image_set(root, n, kind=kind, n_jobs=1, log=lambda *_: None)
    assert (root / "train.csv").stat().st_mtime_ns == before
