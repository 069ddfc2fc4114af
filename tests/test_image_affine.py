"""ImageAffine: albumentations' Affine without the work an image-only call never uses: the same pixels, the same
random stream, and A.Affine itself for every call that carries anything else."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from pipeline.config import AugmentConfig
from pipeline.data.image_affine import ImageAffine, _is_identity
from pipeline.data.transforms import finishing_steps, transform_name

SETTINGS = [
    {"translate_px": [-2, 2], "scale": [0.9, 1.1], "rotate": [-10, 10]},              # the demo's
    {"scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "rotate": [-10, 10]},   # the mask competition's
    {"shear": [-15, 15], "rotate": [-30, 30], "fit_output": True},                   # a new output shape
    {"scale": [0.5, 2.0], "keep_ratio": True, "balanced_scale": True, "interpolation": cv2.INTER_CUBIC},
    {"translate_px": {"x": [-3, 3], "y": 0}, "border_mode": cv2.BORDER_REFLECT_101},
    {"rotate": [-45, 45], "fill": [255, 0, 128], "interpolation": cv2.INTER_NEAREST},
    {"translate_px": [-1, 1]},                  # only shifts: the identity matrix comes up (1 draw in 9)
]
IMAGES = {
    "rgb uint8 32x32": np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8),
    "rgb uint8 40x24": np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8),
    "rgba float32": np.random.default_rng(2).random((24, 28, 4), dtype=np.float32),
    "gray HxWx1": np.random.default_rng(3).integers(0, 256, (20, 20, 1), dtype=np.uint8),
    "gray HxW": np.random.default_rng(4).integers(0, 256, (20, 22), dtype=np.uint8),
    "5 channels": np.random.default_rng(5).integers(0, 256, (16, 16, 5), dtype=np.uint8),
}


def _pair(params: dict, p: float, seed: int, after=()):
    """The same pipeline twice, seeded alike: one with A.Affine, one with ImageAffine (then `after`, built twice)."""
    return [A.Compose([cls(**params, p=p), *[t() for t in after]], seed=seed) for cls in (A.Affine, ImageAffine)]


@pytest.mark.parametrize("params", SETTINGS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_pixels_and_draws_equal_affine_s_for_every_setting_and_image(params, name):
    """Every output equal to A.Affine's, call after call, and the stream after it drawn alike: a brightness
    change that follows sees the same draws (a changed draw order would shift it)."""
    image = IMAGES[name]
    ref, fast = _pair(params, 0.7, seed=11, after=[lambda: A.RandomBrightnessContrast(p=0.5)])
    for _ in range(40):
        expected, got = ref(image=image)["image"], fast(image=image)["image"]
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_the_identity_draw_returns_the_image_itself_as_affine_does():
    image = IMAGES["rgb uint8 32x32"]
    transform = ImageAffine(translate_px=0, p=1.0)      # nothing moves: the identity matrix, every call
    assert transform(image=image)["image"] is image
    assert A.Affine(translate_px=0, p=1.0)(image=image)["image"] is image


@pytest.mark.parametrize("delta", [0.0, 1e-9, 5e-6, 2e-5, 1e-3, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("entry", [(0, 0), (0, 2), (1, 0), (2, 2)])
def test_the_identity_test_agrees_with_np_allclose(delta, entry):
    matrix = np.eye(3)
    matrix[entry] += delta
    assert _is_identity(matrix) == np.allclose(matrix, np.eye(3))


def test_calls_with_boxes_or_masks_are_affine_s_own():
    """Anything besides the image (bounding boxes, a mask) goes through A.Affine's path, boxes included."""
    image = IMAGES["rgb uint8 32x32"]
    mask = (image[..., 0] > 128).astype(np.uint8)
    boxes = np.array([[2, 3, 20, 25], [10, 10, 30, 30]], dtype=np.float32)
    params = SETTINGS[0] | {"p": 1.0}
    outs = [A.Compose([cls(**params)], seed=3, bbox_params=A.BboxParams(format="pascal_voc", label_fields=[]))
            for cls in (A.Affine, ImageAffine)]
    for _ in range(10):
        expected, got = (c(image=image, mask=mask, bboxes=boxes) for c in outs)
        for key in ("image", "mask", "bboxes"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_the_config_s_affine_is_built_as_image_affine_and_still_named_affine():
    aug = AugmentConfig(image_size=32, train=[{"Affine": {"rotate": [-10, 10], "p": 0.7}},
                                              {"RandomBrightnessContrast": {"p": 0.3}}, "HorizontalFlip"])
    steps = finishing_steps(aug, train=True, normalize=False)
    assert [type(t) for t in steps] == [ImageAffine, A.RandomBrightnessContrast, A.HorizontalFlip]
    assert [transform_name(t) for t in steps] == ["Affine", "RandomBrightnessContrast", "HorizontalFlip"]
    assert steps[0].rotate == (-10.0, 10.0) and steps[0].p == 0.7
