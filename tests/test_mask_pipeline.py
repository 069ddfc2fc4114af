"""The mask competition through the real Make targets, with the three-head model."""

import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.train.models import create_model, load_trained_model
from tests.conftest import REPO, write_config
from tests.test_end_to_end import _make, soft_vote_labels

pytestmark = pytest.mark.slow


def test_mask_sample_runs_end_to_end_with_three_heads(tmp_path):
    cfg = yaml.safe_load((REPO / "configs/mask.yaml").read_text())
    data = tmp_path / "mask_sample"
    cfg["output_dir"] = str(tmp_path / "outputs")
    cfg["folds"] = {"n_splits": 3, "dir": str(tmp_path / "folds")}
    cfg["data"].update(train_csv=str(data / "pipeline_train.csv"), image_root=str(data),
                       sample_submission=str(data / "eval/info.csv"), test_labels=str(data / "eval_truth.csv"))
    cfg["model"] = {"name": "test_resnet", "heads": "mask"}
    cfg["augment"].update(image_size=32, pre_resize_crop=[320, 256])
    cfg["train"].update(epochs=1, device="cpu")
    result = _make("folds", "train", "ensemble", config=write_config(tmp_path / "mask.yaml", cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    sub = pd.read_csv(tmp_path / "outputs/mask/submission.csv")
    info = pd.read_csv(data / "eval/info.csv")
    assert list(sub.columns) == ["ImageID", "ans"] and sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].astype(str).tolist() == soft_vote_labels(tmp_path / "outputs/mask", 3)
    folds = pd.read_csv(tmp_path / "folds/mask.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # a person never spans two folds

    model, meta = load_trained_model(tmp_path / "outputs/mask/fold_0/weights.safetensors")
    assert meta["heads"] == "mask" and len(meta["classes"]) == 18
    probs = model(torch.randn(4, 3, 32, 32)).softmax(dim=1)
    assert probs.shape == (4, 18) and torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-5)


def test_mask_heads_refuse_a_dataset_without_18_classes():
    cfg = load_config(None, {"model": {"name": "test_resnet", "heads": "mask"}})
    with pytest.raises(ValueError, match="18 mask classes"):
        create_model(cfg.model, 10)
