"""`gpu-check`'s logic on the CPU: the refusal without CUDA, each check's verdict on constructed figures,
the table and the JSON, and the files it reads. No GPU figure is measured here."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from pipeline.tools import gpu_check, gpu_runs
from pipeline.tools.gpu_verdicts import (AMP_VARIANTS, GPU_EFFICIENCY_FLOOR, describe, judge_amp, judge_bench,
                                         judge_parallel, judge_resume)
from pipeline.tools.run_files import foreign_fold_files, metrics_agree, oof_score, weights_difference


# ---- the refusal ------------------------------------------------------------------------------

def _no_runner(*_a, **_k):
    raise AssertionError("a check ran on a machine without CUDA")


def test_without_cuda_it_prints_one_line_exits_nonzero_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("run_bench_check", "run_amp_check", "run_parallel_check", "run_resume_check"):
        monkeypatch.setattr(gpu_runs, name, _no_runner)
    out = tmp_path / "outputs" / "gpu-check.json"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.NO_CUDA_EXIT != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "no CUDA device" in captured.err
    assert not (tmp_path / "outputs").exists()          # not even the work folder
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu_check.run_gpu_check(out)


# ---- the orchestration, table and JSON (runners replaced by constructed figures) ------------------

GOOD_FIGURES = {
    "bench": {run: {"training_efficiency": 0.97, "training_reliable": True, "prediction_efficiency": 0.96,
                    "prediction_reliable": True, "train_images_per_s": 3000.0, "bare_images_per_s": 3100.0,
                    "loader_images_per_s": 5000.0, "bound": "the model", "gpu_peak_mb": 9000.0,
                    "settings": {"model": "resnet50", "image_size": 224, "batch_size": 128, "amp": "bf16",
                                 "channels_last": True, "loader_workers": 8, "data": run}}
              for run in ("demo", "photos")},
    "amp": {"tolerance": 0.03, "runs": {name: {"seconds": 40.0, "validated": True, "oof": 0.92 + 0.001 * i,
                                               "epoch_s_median": 1.5, "devices": ["cuda"]}
                                        for i, name in enumerate(AMP_VARIANTS)}},
    "parallel": {way: {"seconds": 30.0, "overlap_at_s": 12.0, "devices": ["cuda"], "foreign": []}
                 for way in ("make", "dask")},
    "resume": {"tolerance": 0.06, "epochs_before_kill": 1, "killed_mid_epoch": True, "resumed": True,
               "weights": {"identical": True, "tensors": 10, "tensors_differing": 0, "max_abs_difference": 0.0},
               "metrics_agree_before_kill": True, "oof_straight": 0.9, "oof_resumed": 0.9},
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA 'available', checks replaced by functions that fill the figures given, GPU facts made up."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "_meta", lambda started: {"gpu": "Fake GPU", "torch": "x", "cuda": "13.0",
                                                            "seconds": 1.0})

    def install(**behaviour):
        for name, check in gpu_check.CHECKS.items():
            def runner(session, figures, deadline, name=name):
                action = behaviour.get(name, GOOD_FIGURES[name])
                if callable(action):
                    return action(session, figures, deadline)
                figures.update(json.loads(json.dumps(action)))
            monkeypatch.setattr(gpu_runs, check.run, runner)
    return install


def test_every_check_runs_in_order_and_the_json_is_written_after_each(tmp_path, fake_gpu):
    out = tmp_path / "gpu-check.json"
    seen_before_amp = []
    fake_gpu(amp=lambda s, f, d: (seen_before_amp.append(json.loads(out.read_text())),
                                  f.update(json.loads(json.dumps(GOOD_FIGURES["amp"])))))
    lines = []
    result = gpu_check.run_gpu_check(out, log=lines.append)
    assert [c["name"] for c in result["checks"]] == ["bench", "amp", "parallel", "resume"]
    assert result["passed"] and all(c["passed"] for c in result["checks"])
    assert [c["name"] for c in seen_before_amp[0]["checks"]] == ["bench"]     # saved before the next check began
    assert json.loads(out.read_text()) == result
    assert (tmp_path / "gpu-check").is_dir()                                  # the runs' work folder


def test_table_has_one_row_per_check_with_result_seconds_and_figures(tmp_path, fake_gpu):
    broken = json.loads(json.dumps(GOOD_FIGURES["amp"]))
    broken["runs"]["fp16"]["oof"] = 0.80
    fake_gpu(amp=broken)
    lines = []
    gpu_check.run_gpu_check(tmp_path / "g.json", log=lines.append)
    text = "\n".join(lines)
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in
            (["bench"], ["amp"], ["parallel"], ["resume"]) and ("PASS" in line or "FAIL" in line)}
    assert set(rows) == {"bench", "amp", "parallel", "resume"}
    assert rows["amp"].split()[1] == "FAIL" and rows["bench"].split()[1] == "PASS"
    assert "fp16 0.8000" in rows["amp"]                          # the figures column
    assert "3 of 4 passed" in text and "on Fake GPU" in text
    assert "fp16: OOF 0.8000 is 0.1200 from fp32's 0.9200" in text   # the reason, under the table


def test_a_check_out_of_time_or_broken_fails_keeping_its_figures_and_the_others_run(tmp_path, fake_gpu):
    def slow(session, figures, deadline):
        figures["demo"] = {"error": "partial"}
        raise gpu_runs.CheckTimeout("the photos bench was still running")

    def broken(session, figures, deadline):
        raise KeyError("weights.json")

    fake_gpu(bench=slow, parallel=broken)
    result = gpu_check.run_gpu_check(tmp_path / "g.json", log=lambda *_: None)
    by_name = {c["name"]: c for c in result["checks"]}
    assert not by_name["bench"]["passed"] and by_name["bench"]["why"].startswith(f"out of time ({gpu_check.CHECKS['bench'].limit_s:.0f} s)")
    assert by_name["bench"]["figures"] == {"demo": {"error": "partial"}}
    assert not by_name["parallel"]["passed"] and "KeyError" in by_name["parallel"]["why"]
    assert by_name["resume"]["passed"] and not result["passed"]


def test_only_runs_the_named_checks_and_names_unknown_ones(tmp_path, fake_gpu):
    fake_gpu()
    result = gpu_check.run_gpu_check(tmp_path / "g.json", only=["resume"], log=lambda *_: None)
    assert [c["name"] for c in result["checks"]] == ["resume"]
    with pytest.raises(ValueError, match="unknown check.*'resum'.*bench, amp, parallel, resume"):
        gpu_check.run_gpu_check(tmp_path / "g.json", only=["resum"])


def test_the_check_limits_leave_time_to_rerun_within_eight_minutes():
    assert sum(c.limit_s for c in gpu_check.CHECKS.values()) <= 7.5 * 60


# ---- each verdict, on constructed figures -----------------------------------------------------

def _figures(name, **changes):
    figures = json.loads(json.dumps(GOOD_FIGURES[name]))
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = figures
        for key in keys:
            node = node[key]
        node[last] = value
    return figures


def test_bench_verdict():
    assert judge_bench(_figures("bench"))[0]
    low = GPU_EFFICIENCY_FLOOR - 0.05
    passed, why = judge_bench(_figures("bench", photos__training_efficiency=low))
    assert not passed and "training efficiency" in why and "the model, not the loader" in why
    passed, why = judge_bench(_figures("bench", photos__training_efficiency=low,
                                       photos__training_efficiency_without_augmentation=0.97))
    assert not passed and why.endswith("(without the augmentations 0.970)")   # the loop or the augmentations?
    assert judge_bench(_figures("bench", photos__training_efficiency=low, photos__bound="the loader"))[0]
    assert not judge_bench(_figures("bench", photos__prediction_efficiency=low, photos__bound="the loader"))[0]
    passed, why = judge_bench(_figures("bench", photos__prediction_reliable=False))
    assert not passed and "unreliable" in why
    passed, why = judge_bench(_figures("bench", demo={"error": "exit 1: CUDA out of memory"}))
    assert not passed and "demo bench did not finish: exit 1: CUDA out of memory" in why
    # the demo's 32 px model outpaces the loader: its low efficiency is reported, not judged
    assert judge_bench(_figures("bench", demo__training_efficiency=0.4))[0]


def test_amp_verdict():
    passed, why = judge_amp(_figures("amp"))
    assert passed and "0.9200" in why
    passed, why = judge_amp(_figures("amp", runs__bf16__oof=0.92 - 0.031))
    assert not passed and why.startswith("bf16: OOF 0.8890 is 0.0310 from fp32's 0.9200")
    assert judge_amp(_figures("amp", runs__bf16__oof=0.92 - 0.029))[0]
    assert "fp16: the submission did not validate" in judge_amp(_figures("amp", runs__fp16__validated=False))[1]
    assert "trained on ['cpu'], not cuda" in judge_amp(_figures("amp", runs__compile__devices=["cpu"]))[1]
    missing = _figures("amp")
    del missing["runs"]["compile"]
    assert "compile did not run" in judge_amp(missing)[1]
    assert "fp16: exit 2" in judge_amp(_figures("amp", runs__fp16={"error": "exit 2"}))[1]


def test_parallel_verdict():
    assert judge_parallel(_figures("parallel"))[0]
    passed, why = judge_parallel(_figures("parallel", dask__overlap_at_s=None))
    assert not passed and "dask: the two folds never trained at the same moment" in why
    passed, why = judge_parallel(_figures("parallel", make__foreign=["fold_1/oof.csv holds rows of folds [0, 1]"]))
    assert not passed and "make: fold_1/oof.csv holds rows of folds [0, 1]" in why
    assert not judge_parallel(_figures("parallel", make={"error": "exit 2"}))[0]


def test_resume_verdict():
    assert judge_resume(_figures("resume"))[1] == "bit-identical weights to the uninterrupted run"
    differ = {"identical": False, "tensors": 10, "tensors_differing": 3, "max_abs_difference": 1e-3}
    passed, why = judge_resume(_figures("resume", weights=differ))
    assert not passed and "the resume changes the result" in why          # agreed until the kill, not after
    nondeterministic = _figures("resume", weights=differ, metrics_agree_before_kill=False, oof_resumed=0.88)
    passed, why = judge_resume(nondeterministic)
    assert passed and "not deterministic" in why
    passed, why = judge_resume(_figures("resume", weights=differ, metrics_agree_before_kill=False, oof_resumed=0.8))
    assert not passed and "0.1000 from the uninterrupted 0.9000" in why
    assert not judge_resume(_figures("resume", killed_mid_epoch=False))[0]
    assert "did not resume" in judge_resume(_figures("resume", resumed=False))[1]


def test_describe_falls_back_to_the_plain_figures_when_a_run_left_few():
    assert describe("resume", {"error": "the rerun failed", "epochs_before_kill": 1}) == \
        "error=the rerun failed, epochs_before_kill=1"


# ---- the make command the checks run ----------------------------------------------------------

def test_make_command_runs_the_demo_on_cuda_under_the_work_folder_with_this_interpreter(tmp_path):
    session = gpu_runs.Session(work=tmp_path, python="/opt/py/bin/python3")
    cmd = gpu_runs.make_command(session, ["folds", "train"], "gpucheck-x", {"train.amp": "bf16"}, jobs=2,
                                variables={"FOLD": "0 1", "GPUS": "3"})
    assert cmd[:5] == ["make", "--no-print-directory", "-j2", "folds", "train"]
    sets = next(a for a in cmd if a.startswith("SET=")).removeprefix("SET=").split()
    assert {"experiment=gpucheck-x", "train.device=cuda", "train.amp=bf16", f"output_dir={tmp_path / 'outputs'}",
            f"folds.dir={tmp_path / 'folds'}"} <= set(sets)
    assert "PY=/opt/py/bin/python3" in cmd and "FOLD=0 1" in cmd and "GPUS=3" in cmd
    # Make's virtual-environment target must be up to date, or Make would pip-install into this interpreter
    ready = next(a for a in cmd if a.startswith("VENV_OK=")).removeprefix("VENV_OK=")
    assert ready == str(tmp_path / "interpreter.ok") and (tmp_path / "interpreter.ok").is_file()
    with pytest.raises(ValueError, match="space"):
        gpu_runs.make_command(gpu_runs.Session(work=tmp_path / "a b"), ["train"], "x")


def test_a_run_past_its_deadline_is_killed_with_everything_it_started(tmp_path):
    import time

    marker = tmp_path / "survived"
    script = f"(sleep 1.5; touch {marker}) & sleep 30"       # a child of the shell, like a fold under Make
    tick = time.monotonic()
    with pytest.raises(gpu_runs.CheckTimeout, match="the fake fold was still running"):
        gpu_runs.run_logged(["sh", "-c", script], tmp_path / "log", tick + 0.5, "the fake fold")
    assert time.monotonic() - tick < 5
    time.sleep(2)
    assert not marker.exists()
    with pytest.raises(RuntimeError, match="`no-such-make` is not installed"):
        gpu_runs.run_logged(["no-such-make"], tmp_path / "log", time.monotonic() + 5, "x")


def test_gpus_and_parallel_gpus_name_the_first_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_check._first_visible_gpu() == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_check._first_visible_gpu() == "0"


# ---- the files the checks read ----------------------------------------------------------------

CLASSES = ["cat", "dog", "owl"]


def _fold(exp, k, rows, labels, predicted, fold_in_sidecar=None):
    d = exp / f"fold_{k}"
    d.mkdir(parents=True)
    probs = np.full((len(rows), 3), 0.1)
    probs[np.arange(len(rows)), [CLASSES.index(p) for p in predicted]] = 0.8
    frame = pd.DataFrame({"row": rows, "label": labels, "fold": k})
    for c, name in enumerate(CLASSES):
        frame[f"prob_{name}"] = probs[:, c]
    frame.to_csv(d / "oof.csv", index=False)
    (d / "weights.json").write_text(json.dumps({"classes": CLASSES, "fold": k if fold_in_sidecar is None
                                                else fold_in_sidecar}))
    save_file({"w": torch.zeros(2)}, str(d / "weights.safetensors"))
    return d


def test_oof_score_scores_every_finished_fold_together(tmp_path):
    _fold(tmp_path, 0, [0, 1], ["cat", "dog"], ["cat", "dog"])
    _fold(tmp_path, 1, [2, 3], ["owl", "owl"], ["owl", "cat"])
    assert oof_score(tmp_path, "accuracy") == pytest.approx(3 / 4)
    assert oof_score(tmp_path, "accuracy", [1]) == pytest.approx(1 / 2)
    with pytest.raises(FileNotFoundError, match="not every fold of \\[1, 2\\]"):
        oof_score(tmp_path, "accuracy", [1, 2])
    (tmp_path / "fold_1" / "weights.safetensors").unlink()              # unfinished: not counted
    assert oof_score(tmp_path, "accuracy") == 1.0


def test_foreign_fold_files_names_what_does_not_belong(tmp_path):
    folds_file = tmp_path / "folds.csv"
    pd.DataFrame({"label": ["cat", "dog", "owl", "owl"], "fold": [0, 0, 1, 1]}).to_csv(folds_file, index=False)
    _fold(tmp_path, 0, [0, 1], ["cat", "dog"], ["cat", "dog"])
    assert foreign_fold_files(tmp_path, 0, folds_file) == []
    _fold(tmp_path, 1, [2, 1], ["owl", "dog"], ["owl", "dog"], fold_in_sidecar=0)
    problems = foreign_fold_files(tmp_path, 1, folds_file)
    assert len(problems) == 2 and "names fold 0" in problems[0] and "fold 1's 2 validation rows" in problems[1]


def test_weights_difference_and_metrics_agreement(tmp_path):
    save_file({"a": torch.tensor([1.0, 2.0]), "b": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    save_file({"a": torch.tensor([1.0, 2.5]), "b": torch.zeros(3)}, str(tmp_path / "y.safetensors"))
    same = weights_difference(tmp_path / "x.safetensors", tmp_path / "x.safetensors")
    assert same["identical"] and same["max_abs_difference"] == 0.0
    diff = weights_difference(tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    assert not diff["identical"] and diff["tensors_differing"] == 1 and diff["max_abs_difference"] == 0.5
    pd.DataFrame({"epoch": [0, 1], "val_loss": [1.0, 0.5], "seconds": [3, 4]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"epoch": [0, 1], "val_loss": [1.0, 0.6], "seconds": [9, 9]}).to_csv(tmp_path / "b.csv", index=False)
    assert metrics_agree(tmp_path / "a.csv", tmp_path / "b.csv", 1)      # seconds do not count
    assert not metrics_agree(tmp_path / "a.csv", tmp_path / "b.csv", 2)


# ---- a check's runs rehearsed on the CPU (the same commands, `train.device: cpu`) ---------------

def _rehearsal(tmp_path, epochs):
    data = tmp_path / "data"
    overrides = {"data.train_csv": data / "train.csv", "data.image_root": data,
                 "data.sample_submission": data / "sample_submission.csv", "data.test_labels": data / "test_labels.csv",
                 "data.demo_scale": 0.2, "model.name": "test_resnet", "train.epochs": epochs,
                 "train.warmup_epochs": 0, "train.batch_size": 32, "tta.views": "[identity]"}
    (tmp_path / "work").mkdir()
    return gpu_runs.Session(work=tmp_path / "work", device="cpu", overrides=overrides, make_jobs=2)


@pytest.mark.rehearsal   # 90 s here: `make gpu-rehearsal` (tests/test_reliability.py proves the resume itself)
def test_resume_run_kills_a_fold_inside_an_epoch_through_make_and_finds_the_same_weights(tmp_path):
    import time

    figures = {}
    gpu_runs.run_resume_check(_rehearsal(tmp_path, epochs=4), figures, time.monotonic() + 900)
    assert figures["killed_mid_epoch"] and figures["epochs_before_kill"] >= 1 and figures["resumed"]
    assert figures["weights"]["identical"] and figures["metrics_agree_before_kill"]
    assert judge_resume(figures) == (True, "bit-identical weights to the uninterrupted run")


# ---- bench beside a GPU: its variants and headline, exercised on the CPU -------------------------

def test_bound_names_the_slower_of_the_model_and_its_loader():
    from pipeline.tools.bench_report import bound

    result = {"headline_variants": {"train": "cache_u8_w8"},
              "train": {"bare": {"images_per_s": 3000.0}, "cache_u8_w8": {"images_per_s": 2000.0, "workers": 8}},
              "loader": {"warm_train_u8_w8": {"images_per_s": 2100.0}, "warm_train_u8": {"images_per_s": 400.0}}}
    b = bound(result)
    assert (b["by"], b["loader_variant"], b["loader_images_per_s"]) == ("the loader", "warm_train_u8_w8", 2100.0)
    result["loader"]["warm_train_u8_w8"]["images_per_s"] = 9000.0
    assert bound(result)["by"] == "the model"


@pytest.mark.slow
def test_bench_beside_a_gpu_heads_with_the_auto_worker_variant(tmp_path, demo_dir, monkeypatch):
    """The variants bench measures beside a GPU (as `bench_report` lists them for cuda), run on the CPU."""
    from pipeline.tools import bench, bench_report
    from pipeline.tools.gpu_verdicts import bench_figures

    for name in ("train_variants", "predict_variants", "loader_variants", "headline_variant"):
        monkeypatch.setattr(bench, name, lambda _device, workers, real=getattr(bench_report, name): real("cuda", workers))
    lines = []
    result = bench.run_bench(tmp_path / "b.json", model="test_resnet", image_size=16, batch_size=8, steps=2,
                             repeats=1, large_images=0, data_dir=demo_dir, workers=1, log=lines.append)
    assert result["headline_variants"] == {"train": "cache_u8_w1", "predict": "cache_u8_w1"}
    assert set(result["train"]) == {"bare", "cache_u8", "disk_w1", "cache_u8_w1", "cache_u8_noaug_w1"}
    assert result["train"]["cache_u8_noaug_w1"]["workers"] == 1 and not result["train"]["cache_u8_noaug_w1"]["augment"]
    assert result["train"]["cache_u8_w1"]["paired"] is False and result["predict"]["cache_u8_w1"]["workers"] == 1
    assert result["bound"]["loader_variant"] == "warm_train_u8_w1"
    assert result["training_headline"]["median"] == result["train"]["cache_u8_w1"]["efficiency"]
    table = next(line for line in lines if line.startswith("bench:"))
    assert "train  cache warm, uint8 + batch Normalize, 1 worker (default)" in table
    assert "train  cache warm, uint8 + batch Normalize, 1 worker, no augmentation" in table
    assert bench_figures(result)["settings"]["loader_workers"] == 1
    assert bench_figures(result)["training_efficiency_without_augmentation"] == \
        result["train"]["cache_u8_noaug_w1"]["efficiency"]


def test_the_bench_row_shows_training_without_augmentation_where_the_bench_measured_it():
    assert "train 0.97 (0.99 without aug.) / predict 0.96" in describe(
        "bench", _figures("bench", photos__training_efficiency_without_augmentation=0.99))
    assert "train 0.97 / predict 0.96" in describe("bench", _figures("bench"))    # a bench without the row
