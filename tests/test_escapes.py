"""Nothing escapes the data root, and no file content that is not an image is ever printed."""

from __future__ import annotations

import os

import pytest

from pipeline.config import load_config
from pipeline.data.tables import DataError, read_test_table, read_train_table
from tests.test_check import _check, _dataset, _of

SECRET = "root:$6$planted-secret-hash:19000:0:99999:7:::"


@pytest.fixture
def outside_secret(tmp_path):
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    return secret


def test_a_link_out_of_the_root_is_refused_by_the_check_without_opening_it(tmp_path, outside_secret):
    root, cfg = _dataset(tmp_path)
    planted = root / "train" / "cat_0.png"
    planted.unlink()
    planted.symlink_to(outside_secret)
    report = _check(cfg)
    problem = _of(report, "path-escapes-root")[0]
    assert problem.row == 2 and "train/cat_0.png" in problem.message and "link" in problem.message
    assert SECRET not in report.format() and "planted" not in report.format()
    assert report.images_checked == 8      # the other 5 train and 3 test images; the link was not opened


def test_a_linked_folder_out_of_the_root_is_refused_by_the_stages(tmp_path, outside_secret):
    root, cfg = _dataset(tmp_path)
    (root / "test").rename(tmp_path / "outside" / "test")
    (root / "test").symlink_to(tmp_path / "outside" / "test")    # the whole test folder lives elsewhere
    with pytest.raises(DataError, match="t0.png' is a link that leads out of the data root"):
        read_test_table(load_config(None, cfg))


def test_links_that_stay_inside_the_root_are_fine(tmp_path):
    root, cfg = _dataset(tmp_path)
    (root / "train" / "cat_0.png").unlink()
    (root / "train" / "cat_0.png").symlink_to(root / "train" / "cat_1.png")
    assert len(read_train_table(load_config(None, cfg))) == 6
    assert _check(cfg).ok


def test_a_root_that_is_itself_a_link_is_fine(tmp_path):
    root, cfg = _dataset(tmp_path)
    os.symlink(root, tmp_path / "alias")
    cfg["data"].update(train_csv=str(tmp_path / "alias/train.csv"), image_root=str(tmp_path / "alias"),
                       sample_submission=str(tmp_path / "alias/sample_submission.csv"))
    assert _check(cfg).ok


@pytest.mark.parametrize("content, said", [
    (SECRET.encode() + b"\n", "a text file of"),
    (bytes(range(256)) * 3, "binary data"),
    (b"", "the file is empty"),
])
def test_a_file_that_is_not_an_image_is_described_not_quoted(tmp_path, content, said):
    root, cfg = _dataset(tmp_path)
    (root / "train" / "dog_1.png").write_bytes(content)
    report = _check(cfg)
    problem = _of(report, "corrupt-image")[0]
    assert said in problem.message
    assert SECRET not in report.format() and "planted" not in report.format()
    assert "\\x" not in report.format() and "b'" not in report.format()


def test_a_config_path_with_shell_syntax_never_reaches_a_shell(tmp_path):
    """A value Make would paste into a rule is refused at parse time, before any recipe runs.

    In a rule `folds/x.csv: <train_csv> ...` a `;` starts the recipe, so the planted path below
    would run `touch pwned` (brace expansion) if it reached the Makefile: the folder with that
    literal name exists, with a valid train CSV in it, and `x` exists as a prerequisite.
    """
    import shutil

    from tests.conftest import REPO, tiny_config_dict, write_config
    from tests.test_end_to_end import _make

    root, _ = _dataset(tmp_path)
    evil_dir = tmp_path / "x;{touch,pwned};#"        # the recipe would run in Make's directory, REPO
    evil_dir.mkdir()
    shutil.copy(root / "train.csv", evil_dir / "train.csv")
    (tmp_path / "x").mkdir()
    cfg = tiny_config_dict(tmp_path, root)
    cfg["data"].update(train_csv=str(evil_dir / "train.csv"), demo=False)
    try:
        result = _make("folds", config=write_config(tmp_path / "evil.yaml", cfg))
        assert not (REPO / "pwned").exists()
    finally:
        (REPO / "pwned").unlink(missing_ok=True)
    assert result.returncode != 0
    assert "data.train_csv" in result.stderr and "cannot be used from Make" in result.stderr


def test_sha256_manifests_see_content_that_kept_its_size_and_time(tmp_path):
    from pipeline.data.manifest import train_manifest

    root, cfg = _dataset(tmp_path)
    image = root / "train" / "cat_0.png"
    stat_cfg = load_config(None, cfg)
    hash_cfg = load_config(None, {**cfg, "data": {**cfg["data"], "manifest": "sha256"}})
    before = (train_manifest(stat_cfg), train_manifest(hash_cfg))
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF                                   # same size ...
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... same time, as `cp -p` would leave it
    assert train_manifest(stat_cfg) == before[0]          # stat cannot see it (documented)
    assert train_manifest(hash_cfg) != before[1]


def test_a_column_of_paths_is_joined_and_refused_exactly_as_safe_join_does(tmp_path, outside_secret, monkeypatch):
    """RootGuard (a folder resolved once) against safe_join (every path resolved) on paths of every shape."""
    from pipeline.data.tables import RootGuard, safe_join

    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f.png").write_bytes(b"x")
    (root / "a" / "out.png").symlink_to(outside_secret)                  # a file linked out
    (root / "linked").symlink_to(outside_secret.parent)                  # a folder linked out
    (root / "a" / "in.png").symlink_to("f.png")                          # a link that stays inside
    (root / "top.png").symlink_to(outside_secret)
    rels = ["a/f.png", "a/out.png", "linked/shadow", "a/in.png", "top.png", "./a/f.png", "a//f.png",
            "a/./f.png", "a/", "...", "..", "../x", str(outside_secret), "a/../a/f.png", "missing/x.png",
            "a/b/../f.png", "", " a", "a/b/c.png", "linked/../a/f.png", ".hidden/x.png"]

    def outcome(join, rel):
        try:
            return str(join(rel))
        except DataError as exc:
            return f"refused: {exc}"

    monkeypatch.chdir(tmp_path)      # relative roots too
    for where in [root, str(root) + "/", "data", "./data", "data/a/.."]:
        guard = RootGuard(where)
        for rel in rels:
            assert outcome(lambda r: guard.join(r, "w"), rel) == outcome(lambda r: safe_join(where, r, "w"), rel), rel
    guard = RootGuard(root)
    refused = [rel for rel in rels if outcome(lambda r: guard.join(r, "w"), rel).startswith("refused")]
    assert set(refused) == {"a/out.png", "linked/shadow", "top.png", "..", "../x", str(outside_secret),
                            "a/../a/f.png", "a/b/../f.png", "linked/../a/f.png"}
