"""The percentile scaling of 8 and 16-bit images: numpy's figures, counted from a histogram in strips
(no float copy of the image: a 20k x 20k 16-bit slide would need 1.6 GB a channel up front)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from segkit.data.io import unit_scale


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(37, 53, 1), (300, 7, 3), (1, 1, 1), (600, 5, 2)])
@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (0.0, 100.0), (50.0, 50.5)])
def test_percentiles_equal_numpys(dtype, shape, percentiles):
    image = np.random.default_rng(sum(shape)).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    scale = unit_scale(image, "percentile", percentiles)
    lo, hi = np.percentile(image.reshape(-1, shape[-1]).astype(np.float32), percentiles, axis=0)
    np.testing.assert_allclose(scale(image[:1, :1]).shape, (1, 1, shape[-1]))
    np.testing.assert_allclose(scale.offset, lo, rtol=1e-6)
    np.testing.assert_allclose(scale.divisor, np.where(hi > lo, hi - lo, 1.0), rtol=1e-6)


def test_a_16_bit_image_is_scaled_without_a_float_copy():
    image = np.random.default_rng(0).integers(0, 65536, (2048, 2048, 1)).astype(np.uint16)  # 8 MB
    tracemalloc.start()
    unit_scale(image, "auto")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < image.nbytes  # a float32 copy alone would be twice the image
