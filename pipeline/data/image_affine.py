"""`ImageAffine`: albumentations' `Affine` for calls that carry only an image: the same pixels in about half the time.

albumentations 2.0.8 (its last MIT release) spends most of an `Affine` call at training sizes around the warp,
not in it: at 32 px a call costs ~75 us, of which OpenCV's warp is ~9 us. Two pieces of that work serve
nothing when the call carries only an image, as every call of this pipeline does (`transform(image=...)`):
- a second affine matrix, for bounding boxes and keypoints (`bbox_matrix`, ~17 us);
- `np.allclose` against the identity before the warp (~20 us of NumPy's generic machinery for nine numbers).
`ImageAffine` keeps albumentations' own parameter sampling (the same random draws, in the same order), its
matrix builder and its warp function, and only drops those two: the output is pixel-identical to `A.Affine`'s
for the same seed (tests/test_image_affine.py). A call that carries anything else (boxes, keypoints, masks)
goes through `A.Affine` unchanged. At the demo's p 0.7 the dropped work was most of what the augmentations
cost a training step on the CPU (`make bench`'s per-augmentation line: Affine 54 us per image before, 23 after).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric

__all__ = ["ImageAffine"]

_IDENTITY = np.eye(3)
_CLOSE = 1e-8 + 1e-5 * np.abs(_IDENTITY)     # np.allclose's default tolerance against the identity, per entry


def _is_identity(matrix: np.ndarray) -> bool:
    """np.allclose(matrix, I) with its default tolerances (atol 1e-8, rtol 1e-5), on nine numbers without its
    generic broadcasting and NaN/inf handling: a NaN or inf entry is never close to 0 or 1 either way."""
    return bool((np.abs(matrix - _IDENTITY) <= _CLOSE).all())


class ImageAffine(A.Affine):
    """`A.Affine` with the image-only work trimmed (module docstring); built from the same parameters."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if set(data) != {"image"}:
            return super().get_params_dependent_on_data(params, data)
        image_shape = params["shape"][:2]
        # A.Affine's draws, in its order: translate, shear, scale, rotate (the same stream, the same values).
        translate = self._get_translate_params(image_shape)
        shear = self._get_shear_params()
        scale = self._get_scale(self.scale, self.keep_ratio, self.balanced_scale, self.py_random)
        rotate = self.py_random.uniform(*self.rotate)
        matrix = fgeometric.create_affine_transformation_matrix(translate, shear, scale, rotate,
                                                                fgeometric.center(image_shape))
        output_shape = image_shape
        if self.fit_output:
            matrix, output_shape = fgeometric.compute_affine_warp_output_shape(matrix, image_shape)
        return {"rotate": rotate, "scale": scale, "matrix": matrix, "output_shape": output_shape}

    def apply(self, img: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, int], **params: Any) -> np.ndarray:
        # OpenCV warps 2-4 channels in one call; A.Affine's wrappers handle the rest (one channel, > 4).
        if img.ndim != 3 or not 2 <= img.shape[2] <= 4:
            return super().apply(img, matrix, output_shape, **params)
        if _is_identity(matrix):
            return img
        height, width = int(round(output_shape[0])), int(round(output_shape[1]))   # half to even, as np.round
        return fgeometric.warp_affine_with_value_extension(img, matrix[:2, :], dsize=(width, height),
                                                           flags=self.interpolation, border_mode=self.border_mode,
                                                           border_value=self.fill)
