"""Test-time augmentation: views, merge modes, and the single batched forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.predict.tta import (MERGE_MODES, merge_view_logits, parse_views, predict_tta, predict_tta_per_view,
                         predict_tta_with_views)

ALL_VIEWS = ["hflip", "vflip", "rot90", "rot180", "rot270", "scale_0.9", "scale_1.1",
             "brightness_0.1", "brightness_-0.1", "contrast_1.2"]


class PoolLinear(nn.Module):
    """Global average pool + linear: invariant to flips and rotations of the image."""

    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class FlatLinear(nn.Module):
    """Linear on the flattened image: sees every pixel's position, so flips change its output."""

    def __init__(self, shape=(3, 8, 8), classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(math.prod(shape), classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class CallCounter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1


def _images(b=2, c=3, h=8, w=8, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _model(cls, **kw):
    torch.manual_seed(0)
    return cls(**kw).eval()


def _reference_merge(probs: torch.Tensor, mode: str) -> torch.Tensor:
    """Merge per-view probabilities (V, B, C) by the definitions, independently of the module."""
    if mode == "mean":
        return probs.mean(0)
    if mode == "geometric_mean":
        g = probs.log().mean(0).exp()
        return g / g.sum(-1, keepdim=True)
    if mode == "max":
        m = probs.max(0).values
        return m / m.sum(-1, keepdim=True)
    raise AssertionError(mode)


# ---- views -------------------------------------------------------------------------------------

def test_identity_is_always_included_once():
    assert [v.name for v in parse_views([])] == ["identity"]
    assert [v.name for v in parse_views(["hflip"])] == ["identity", "hflip"]
    assert [v.name for v in parse_views(["hflip", "identity", "hflip"])] == ["hflip", "identity"]


def test_duplicates_dropped_in_order_and_names_canonical():
    names = [v.name for v in parse_views(["scale_1.10", "vflip", "scale_1.1", "brightness_-0.10", "vflip"])]
    assert names == ["identity", "scale_1.1", "vflip", "brightness_-0.1"]


@pytest.mark.parametrize("name", ["hflp", "rot45", "scale", "flip_1", "Hflip"])
def test_unknown_view_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match="tta.views") as err:
        parse_views(["hflip", name])
    message = str(err.value)
    assert repr(name) in message
    for valid in ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "scale_<f>", "brightness_<d>",
                  "contrast_<f>"):
        assert valid in message


@pytest.mark.parametrize("name", ["scale_abc", "scale_", "scale_0", "scale_-1", "scale_nan", "contrast_0",
                                  "brightness_inf"])
def test_malformed_parameter_is_rejected(name):
    with pytest.raises(ValueError, match="tta.views"):
        parse_views([name])


def test_views_must_be_a_list_of_strings():
    with pytest.raises(ValueError, match="tta.views"):
        parse_views("hflip")
    with pytest.raises(ValueError, match="tta.views"):
        parse_views(["hflip", 3])


def test_geometric_views_do_what_they_say():
    x = _images(h=6, w=6)
    view = {v.name: v.fn for v in parse_views(ALL_VIEWS)}
    assert torch.equal(view["identity"](x), x)
    assert torch.equal(view["hflip"](x), x.flip(-1))
    assert torch.equal(view["vflip"](x), x.flip(-2))
    assert torch.equal(view["rot90"](x)[..., 0, 0], x[..., 0, -1])  # counter-clockwise
    assert torch.equal(view["rot180"](x), x.flip(-1).flip(-2))
    assert torch.equal(view["rot270"](view["rot90"](x)), x)


def test_rot90_needs_square_images_but_rot180_does_not():
    x = _images(h=8, w=6)
    view = {v.name: v.fn for v in parse_views(["rot90", "rot180", "rot270"])}
    for name in ("rot90", "rot270"):
        with pytest.raises(ValueError, match=f"tta.views: '{name}' needs square images"):
            view[name](x)
    assert view["rot180"](x).shape == x.shape


@pytest.mark.parametrize("factor", [0.3, 0.5, 0.9, 1.0, 1.1, 1.5, 2.0])
def test_scale_keeps_shape(factor):
    x = _images(h=9, w=12)
    (view,) = parse_views([f"scale_{factor}", "identity"])[:1]
    assert view.name == f"scale_{factor}"
    y = view.fn(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_scale_content():
    const = torch.full((1, 3, 10, 10), 0.7)
    for f in (0.3, 0.8, 1.25):  # reflect padding and cropping of a constant image stay constant
        assert torch.allclose(parse_views([f"scale_{f}"])[1].fn(const), const)
    x = _images(h=10, w=10)
    assert torch.equal(parse_views(["scale_1.0"])[1].fn(x), x)
    # zoom x2 of a 4x4 patch centred in an 8x8 image fills the whole image with it
    img = torch.zeros(1, 1, 8, 8)
    img[..., 2:6, 2:6] = 1.0
    zoomed = parse_views(["scale_2"])[1].fn(img)
    assert zoomed[..., 1:7, 1:7].min() == 1.0


def test_photometric_views():
    x = _images()
    view = {v.name: v.fn for v in parse_views(["brightness_0.1", "brightness_-0.1", "contrast_2"])}
    assert torch.allclose(view["brightness_0.1"](x), x + 0.1)
    assert torch.allclose(view["brightness_-0.1"](x), x - 0.1)
    y = view["contrast_2.0"](x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(y.mean(dim=(2, 3), keepdim=True), mean, atol=1e-6)
    assert torch.allclose(y - mean, 2 * (x - mean), atol=1e-6)


# ---- merging -----------------------------------------------------------------------------------

def _logits_of(*rows):
    """Logits (V, 1, C) whose softmax is exactly the given probability rows."""
    return torch.tensor([[r] for r in rows], dtype=torch.float64).log()


@pytest.mark.parametrize("mode, views, expected", [
    ("mean", [[0.9, 0.1], [0.5, 0.5]], [0.7, 0.3]),
    ("geometric_mean", [[0.9, 0.1], [0.1, 0.9]], [0.5, 0.5]),
    ("geometric_mean", [[0.9, 0.1], [0.5, 0.5]], [0.75, 0.25]),  # sqrt(.45) : sqrt(.05) = 3 : 1
    ("max", [[0.9, 0.1], [0.5, 0.5]], [0.9 / 1.4, 0.5 / 1.4]),
    ("max", [[0.9, 0.1], [0.1, 0.9]], [0.5, 0.5]),
])
def test_merge_modes_hand_computed(mode, views, expected):
    merged = merge_view_logits(_logits_of(*views), mode)
    assert merged.shape == (1, 2)
    assert torch.allclose(merged, torch.tensor([expected], dtype=torch.float64))


def test_logit_mean_hand_computed():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # mean logits (1, 0)
    e = math.e
    assert torch.allclose(merge_view_logits(logits, "logit_mean"), torch.tensor([[e / (e + 1), 1 / (e + 1)]]))


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_merged_rows_sum_to_one(mode):
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)) * 5
    merged = merge_view_logits(logits, mode)
    assert merged.shape == (4, 5) and (merged >= 0).all()
    assert torch.allclose(merged.sum(-1), torch.ones(4))
    assert merge_view_logits(logits.half(), mode).dtype == torch.float32  # half logits upcast


def test_geometric_mean_of_probabilities_is_stable_for_extreme_logits():
    logits = torch.tensor([[[1000.0, 0.0]], [[0.0, 1000.0]], [[0.0, 0.0]]])
    assert torch.allclose(merge_view_logits(logits, "geometric_mean"), torch.tensor([[0.5, 0.5]]))


def test_unknown_merge_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tta.merge") as err:
        merge_view_logits(torch.zeros(1, 1, 2), "gmean")
    assert all(mode in str(err.value) for mode in MERGE_MODES)


def test_bad_logits_shape_is_rejected():
    with pytest.raises(ValueError, match="views, batch, classes"):
        merge_view_logits(torch.zeros(2, 3), "mean")


# ---- prediction --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MERGE_MODES)
def test_flip_invariant_model_gains_nothing_from_flips(mode):
    model, x = _model(PoolLinear), _images()
    alone = predict_tta(model, x, parse_views(["identity"]), mode)
    flipped = predict_tta(model, x, parse_views(["identity", "hflip", "vflip", "rot90"]), mode)
    assert torch.allclose(alone, flipped, atol=1e-6)
    # control: a model that sees positions does change under hflip, so the view is really applied
    flat = _model(FlatLinear)
    assert not torch.allclose(predict_tta(flat, x, parse_views([]), mode),
                              predict_tta(flat, x, parse_views(["hflip"]), mode), atol=1e-4)


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_batched_equals_view_by_view(mode):
    model, x = _model(FlatLinear), _images(b=3)
    views = parse_views(ALL_VIEWS)
    with torch.no_grad():
        logits = torch.stack([model(v.fn(x)) for v in views])  # one pass per view
    expected = logits.mean(0).softmax(-1) if mode == "logit_mean" else _reference_merge(logits.softmax(-1), mode)
    assert torch.allclose(predict_tta(model, x, views, mode), expected, atol=1e-5)
    assert torch.allclose(predict_tta(model, x, views, mode, chunk_views=3), expected, atol=1e-5)
    per_view = predict_tta_per_view(model, x, views)
    assert per_view.shape == (len(views), 3, 4)
    assert torch.allclose(per_view, logits.softmax(-1), atol=1e-5)


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_views_and_merge_from_one_pass_equal_the_separate_calls(mode):
    model, x = _model(FlatLinear), _images(b=3)
    views = parse_views(["hflip", "scale_0.9", "contrast_1.2"])
    counter = CallCounter(model)
    per_view, merged = predict_tta_with_views(model, x, views, mode)
    assert counter.calls == 1                               # one forward for the views and the merge
    assert per_view.shape == (4, 3, 4) and merged.shape == (3, 4)
    assert torch.allclose(per_view, predict_tta_per_view(model, x, views), atol=1e-6)
    assert torch.allclose(merged, predict_tta(model, x, views, mode), atol=1e-6)
    with pytest.raises(ValueError, match="tta.merge"):
        predict_tta_with_views(model, x, views, "median")


def test_flip_invariant_model_gives_identical_views():
    model, x = _model(PoolLinear), _images()
    per_view, merged = predict_tta_with_views(model, x, parse_views(["hflip", "vflip", "rot180"]))
    for v in per_view[1:]:
        assert torch.allclose(v, per_view[0], atol=1e-6)
    assert torch.allclose(merged, per_view[0], atol=1e-6)


def test_model_is_called_once_per_batch():
    model, x = _model(FlatLinear), _images()
    counter = CallCounter(model)
    views = parse_views(ALL_VIEWS)  # 11 views
    predict_tta(model, x, views)
    assert counter.calls == 1
    predict_tta_per_view(model, x, views)
    assert counter.calls == 2
    predict_tta(model, x, views, chunk_views=4)  # 4 + 4 + 3 views
    assert counter.calls == 5
    with pytest.raises(ValueError, match="tta.merge"):  # a bad merge mode fails before any work
        predict_tta(model, x, views, "median")
    assert counter.calls == 5


def test_predict_rows_sum_to_one_and_training_state_untouched():
    model, x = _model(FlatLinear), _images()
    for training in (False, True):
        model.train(training)
        probs = predict_tta(model, x, parse_views(["hflip", "scale_1.1"]))
        assert model.training is training
        assert probs.shape == (2, 4) and not probs.requires_grad
        assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_bad_arguments_are_rejected():
    model, x = _model(FlatLinear), _images()
    with pytest.raises(ValueError, match="chunk_views"):
        predict_tta(model, x, parse_views([]), chunk_views=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        predict_tta(model, x[0], parse_views([]))
    with pytest.raises(ValueError, match="tta.views: no views"):
        predict_tta(model, x, [])


def test_real_timm_model_batched_equals_view_by_view():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()  # BatchNorm in eval mode
    x, views = _images(b=2, h=16, w=16), parse_views(["hflip", "rot90", "scale_0.9"])
    with torch.no_grad():
        logits = torch.stack([model(v.fn(x)) for v in views])
    assert torch.allclose(predict_tta_per_view(model, x, views), logits.softmax(-1), atol=1e-5)

