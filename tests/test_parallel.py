"""Parallel fold training: a real local Dask cluster gives the same fold files as sequential training."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.data.manifest import train_fingerprint
from pipeline.train.parallel import FoldsFailedError, device_for_fold, parse_gpus, pin_gpu, run_folds
from pipeline.data.fold_file import make_folds

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, as CI has two cores (shared by this module's tests)."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Dask workers run torch with one intra-op thread (Dask sets OMP_NUM_THREADS=1); in-process
    training uses one too, so CPU results are bitwise comparable (other thread counts differ in
    the last bits) and two busy CI cores are not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tiny_cfg_dict, output_dir, **train):
    d = {**tiny_cfg_dict, "output_dir": str(output_dir), "train": {**tiny_cfg_dict["train"], **train}}
    return load_config(None, d)


@pytest.fixture
def folds_ready(tiny_cfg):
    make_folds(tiny_cfg, log=lambda *a: None)
    return tiny_cfg


def _fold_files(cfg, fold):
    out = cfg.fold_dir(fold)
    metrics = pd.read_csv(out / "metrics.csv").drop(columns=["seconds"])  # wall time differs
    return metrics, pd.read_csv(out / "oof.csv"), load_file(str(out / "weights.safetensors"))


def test_dask_cluster_matches_sequential_and_skips_done_folds(client, folds_ready, tiny_cfg_dict, tmp_path):
    dask_cfg = _cfg(tiny_cfg_dict, tmp_path / "dask")
    seq_cfg = _cfg(tiny_cfg_dict, tmp_path / "seq")

    assert run_folds(dask_cfg, [0, 1], backend="dask", scheduler=client) == {0: "done", 1: "done"}
    assert run_folds(seq_cfg, [0, 1], backend="local") == {0: "done", 1: "done"}

    for k in (0, 1):
        d_metrics, d_oof, d_weights = _fold_files(dask_cfg, k)
        s_metrics, s_oof, s_weights = _fold_files(seq_cfg, k)
        pd.testing.assert_frame_equal(d_metrics, s_metrics, check_exact=True)
        pd.testing.assert_frame_equal(d_oof, s_oof, check_exact=True)
        assert d_weights.keys() == s_weights.keys()
        for name in d_weights:
            assert torch.equal(d_weights[name], s_weights[name]), name
        assert not (dask_cfg.fold_dir(k) / "state").exists()

    # A second run finds both folds done with this config and trains nothing.
    stamp = (dask_cfg.fold_dir(0) / "weights.safetensors").stat().st_mtime_ns
    assert run_folds(dask_cfg, [0, 1], backend="dask", scheduler=client) == {0: "skipped", 1: "skipped"}
    assert (dask_cfg.fold_dir(0) / "weights.safetensors").stat().st_mtime_ns == stamp


def test_failed_fold_is_reported_by_number_and_the_other_completes(client, folds_ready, tiny_cfg_dict, tmp_path):
    cfg = _cfg(tiny_cfg_dict, tmp_path / "out")
    corrupt = cfg.fold_dir(1) / "state" / "last.pt"   # a damaged checkpoint: fold 1 cannot resume
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")

    with pytest.raises(FoldsFailedError) as info:
        run_folds(cfg, [0, 1], backend="dask", scheduler=client)
    results = info.value.results
    assert results[0] == "done"
    assert results[1] not in ("done", "skipped") and results[1]
    message = str(info.value)
    assert "[1]" in message and "fold 1:" in message
    assert "make train FOLD=1" in message and "--fold 1" in message
    assert (cfg.fold_dir(0) / "weights.safetensors").is_file()
    assert not (cfg.fold_dir(1) / "weights.safetensors").exists()


def test_local_backend_reports_failures_too_and_then_skips(folds_ready, tiny_cfg_dict, tmp_path):
    cfg = _cfg(tiny_cfg_dict, tmp_path / "out")
    corrupt = cfg.fold_dir(2) / "state" / "last.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"garbage")
    with pytest.raises(FoldsFailedError) as info:
        run_folds(cfg, [0, 2], backend="local")
    assert info.value.results[0] == "done" and "fold 2:" in str(info.value)
    with pytest.raises(FoldsFailedError) as again:
        run_folds(cfg, [0, 2], backend="local")
    assert again.value.results[0] == "skipped"


def test_stale_folds_are_retrained_and_force_retrains_done_ones(folds_ready, tiny_cfg_dict, tmp_path):
    cfg = _cfg(tiny_cfg_dict, tmp_path / "out")
    weights = cfg.fold_dir(0) / "weights.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    sidecar = weights.with_suffix(".json")
    sidecar.write_text(json.dumps({"fingerprint": "0123456789abcdef"}))   # another config's weights
    assert run_folds(cfg, [0], backend="local") == {0: "done"}
    assert json.loads(sidecar.read_text())["fingerprint"] == train_fingerprint(cfg)
    assert run_folds(cfg, [0], backend="local") == {0: "skipped"}

    made = cfg.folds_file.stat().st_mtime
    os.utime(weights, (made - 60, made - 60))            # folds remade after the fold was trained
    assert run_folds(cfg, [0], backend="local") == {0: "done"}
    assert run_folds(cfg, [0], backend="local") == {0: "skipped"}
    assert run_folds(cfg, [0], backend="local", force=True) == {0: "done"}


def test_daemonic_workers_train_without_loader_processes(client, folds_ready, tiny_cfg_dict, tmp_path):
    """LocalCluster workers are daemonic: a DataLoader with num_workers>0 could not start there."""
    cfg = _cfg(tiny_cfg_dict, tmp_path / "out", num_workers=2)
    logs = []
    address = client.scheduler.address   # a scheduler address works like a Client
    assert run_folds(cfg, [0], backend="dask", scheduler=address, log=logs.append) == {0: "done"}
    assert any("num_workers=0" in line for line in logs)
    meta = json.loads((cfg.fold_dir(0) / "weights.json").read_text())
    zero = _cfg(tiny_cfg_dict, tmp_path / "out", num_workers=0)
    assert meta["fingerprint"] == train_fingerprint(zero)
    assert run_folds(cfg, [0], backend="dask", scheduler=client) == {0: "skipped"}


def test_own_local_cluster_keeps_dataloader_workers(folds_ready, tiny_cfg_dict, tmp_path):
    """No scheduler: run_folds starts (and stops) a LocalCluster whose workers are not daemonic."""
    cfg = _cfg(tiny_cfg_dict, tmp_path / "out", num_workers=1)
    logs = []
    assert run_folds(cfg, [1, 2], backend="dask", log=logs.append) == {1: "done", 2: "done"}
    assert any("started a local Dask cluster: 2 worker(s), 1 thread(s) each" in line for line in logs)
    assert not any("num_workers=0" in line for line in logs)
    for k in (1, 2):
        meta = json.loads((cfg.fold_dir(k) / "weights.json").read_text())
        assert meta["fingerprint"] == train_fingerprint(cfg)


def test_gpus_without_gpu_workers_is_an_error_not_a_hang(client, folds_ready, tiny_cfg_dict, tmp_path):
    d = {**tiny_cfg_dict, "output_dir": str(tmp_path / "out"), "parallel": {"gpus": [0, 1]}}
    with pytest.raises(ValueError, match="GPU resource"):
        run_folds(load_config(None, d), [0], backend="dask", scheduler=client)


def test_bad_fold_numbers_and_missing_folds_file_fail_before_any_work(tiny_cfg, folds_ready):
    with pytest.raises(ValueError, match="n_splits is 3"):
        run_folds(tiny_cfg, [0, 3], backend="local")
    tiny_cfg.folds_file.unlink()
    with pytest.raises(FileNotFoundError, match="make folds"):
        run_folds(tiny_cfg, [0], backend="local")


def test_device_for_fold_is_round_robin():
    assert [device_for_fold(k, [0, 1, 2, 3]) for k in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [device_for_fold(k, "2,5") for k in range(4)] == ["2", "5", "2", "5"]
    assert device_for_fold(3, [7]) == "7"
    assert device_for_fold(0, None) is None and device_for_fold(1, []) is None and device_for_fold(1, "") is None


def test_parse_gpus_and_pin_gpu():
    assert parse_gpus("0, 1,3") == [0, 1, 3]
    assert parse_gpus(2) == [2]
    assert parse_gpus(["GPU-abc", 1]) == ["GPU-abc", 1]
    with pytest.raises(ValueError, match="parallel.gpus"):
        parse_gpus("0,x")
    env: dict = {}
    assert pin_gpu(5, [0, 1], environ=env) == "1" and env == {"CUDA_VISIBLE_DEVICES": "1"}
    env = {}
    assert pin_gpu(5, None, environ=env) is None and env == {}
