"""The docs' bundle sentence (pipeline/tools/docs/bundle_blocks.py) from a constructed docs/figures/bundle.json."""

from __future__ import annotations

import json

from pipeline.tools.docs.bundle_blocks import blocks


def _figures(tmp_path, device="cpu"):
    machine = {"device": device, "gpu": "NVIDIA H100" if device == "cuda" else None, "cpu": "AMD EPYC", "cores": 2,
               "load_average_before": [3.5, 2.0, 1.0]}
    (tmp_path / "bundle.json").write_text(json.dumps({
        "folds": 5, "views": 3, "bundle_bytes": 3 * 2**20, "weights_bytes": 2 * 2**20 + 2**19, "images": 300,
        "predict_seconds": 12.5, "seconds_per_1000_images": 41.67, "wall_seconds": 20.0,
        "build_time_estimate_per_1000_images": 60.0, "machine": machine, "verdict": "equals x byte for byte"}))
    return tmp_path


def test_the_sentence_gives_the_size_the_speed_where_it_was_measured_and_the_check(tmp_path):
    text = blocks(_figures(tmp_path))["bundle"]
    assert "(5 folds x 3 views) is 3.0 MiB, of which 2.5 MiB weights" in text
    assert "12.5 s for the 300 test images on cpu (2-core AMD EPYC, load average 3.5): 41.67 s per 1,000" in text
    assert text.endswith("bundle-check: equals x byte for byte.\n")


def test_a_gpu_measurement_names_the_gpu(tmp_path):
    assert "on cuda (NVIDIA H100, load average 3.5)" in blocks(_figures(tmp_path, "cuda"))["bundle"]


def test_no_figures_no_block(tmp_path):
    assert blocks(tmp_path) == {}
