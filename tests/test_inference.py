"""Inference: sliding-window equivalences, Gaussian blending against a hand computation, flip TTA, AMP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from segkit import SegkitError
from segkit.engine.inference import flip_tta, gaussian_weights, model_forward, predict_logits, sliding_window, window_starts


def conv_net(kernel: int, seed: int = 0, in_ch: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    pad = kernel // 2
    return nn.Sequential(nn.Conv2d(in_ch, 5, kernel, padding=pad), nn.ReLU(), nn.Conv2d(5, classes, kernel, padding=pad)).eval()


def images(n: int = 2, h: int = 50, w: int = 70, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("size", "tile", "stride", "expected"), [
    (100, 32, 24, [0, 24, 48, 68]),  # the last window shifted back to end at 100
    (64, 32, 32, [0, 32]),
    (65, 32, 32, [0, 32, 33]),
    (20, 32, 8, [0]),
    (32, 32, 1, [0]),
])
def test_window_starts(size, tile, stride, expected):
    assert window_starts(size, tile, stride) == expected


def test_windows_cover_every_pixel_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size, tile = int(rng.integers(1, 300)), int(rng.integers(1, 80))
        stride = int(rng.integers(1, tile + 1))
        starts = window_starts(size, tile, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            assert 0 <= s and s + min(tile, size) <= size
            covered[s : s + tile] = True
        assert covered.all() and starts == sorted(set(starts))



@pytest.mark.parametrize("tile, overlap, step", [(10, 0.8, 2), (40, 0.8, 8), (20, 0.7, 6), (512, 0.25, 384), (64, 0.5, 32),
                                                 (10, 0.74, 2), (64, 0.99, 1), (5, 0.9, 1)])
def test_the_window_step_is_tile_times_one_minus_overlap_rounded_down(tile, overlap, step):
    """int(10 * (1 - 0.8)) is 1 in floats (1.9999999999999996): twice the windows along each axis."""
    from segkit.engine.inference import _window_grid

    _, _, ys, xs = _window_grid(tile * 3, tile * 3, tile, overlap)
    assert ys == xs == window_starts(tile * 3, tile, step)


def test_gaussian_weights_match_the_formula():
    th, tw = 16, 24
    w = gaussian_weights((th, tw)).numpy()
    y = np.arange(th) - (th - 1) / 2
    x = np.arange(tw) - (tw - 1) / 2
    expected = np.exp(-(y[:, None] ** 2) / (2 * (0.125 * th) ** 2) - x[None, :] ** 2 / (2 * (0.125 * tw) ** 2))
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w.min() > 0 and np.allclose(w, w[::-1, ::-1])
    assert gaussian_weights((5, 5))[2, 2] == 1.0


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_sliding_window_of_a_pixelwise_model_equals_the_whole_image(overlap, blend):
    model = conv_net(1)  # 1x1 convolutions: each output pixel sees its own input pixel only
    x = images()
    whole = predict_logits(model, x)
    tiled = predict_logits(model, x, tile=16, overlap=overlap, blend=blend, batch_size=5)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)


def test_tiles_without_overlap_give_each_tiles_own_logits():
    model = conv_net(3)  # sees neighbours: tiles differ from the whole image near their borders
    x = images(h=64, w=96)
    forward = model_forward(model)
    tiled = predict_logits(model, x, tile=32, overlap=0.0)
    with torch.no_grad():
        for y0, x0 in itertools.product(range(0, 64, 32), range(0, 96, 32)):
            own = forward(x[:, :, y0 : y0 + 32, x0 : x0 + 32])
            torch.testing.assert_close(tiled[:, :, y0 : y0 + 32, x0 : x0 + 32], own, rtol=1e-6, atol=1e-6)
        whole = forward(x)
    assert not torch.allclose(tiled, whole, atol=1e-4)  # the check above can fail
    # a tile as large as the image is the whole image
    torch.testing.assert_close(predict_logits(model, x, tile=128), whole, rtol=1e-6, atol=1e-6)
    # ... and so is a whole segkit model, whose own padding makes tile-aligned windows exact
    import segkit

    torch.manual_seed(0)
    unet = segkit.create_model("unet", encoder="resnet18", num_classes=2, in_channels=2, decoder_channels=[8, 8, 8, 8, 8]).eval()
    torch.testing.assert_close(predict_logits(unet, x[:1], tile=(64, 96)), predict_logits(unet, x[:1]), rtol=1e-5, atol=1e-5)


def test_gaussian_blend_against_a_hand_computation():
    """A 'model' that answers each window with its own number: the blend is the weighted mean of the numbers."""
    calls: list[int] = []

    def numbered(batch: torch.Tensor) -> torch.Tensor:
        out = torch.empty(batch.shape[0], 1, *batch.shape[-2:])
        for i in range(batch.shape[0]):
            out[i] = len(calls)
            calls.append(1)
        return out

    h = w = 40
    tile, overlap = 24, 0.5  # step 12: starts 0, 12, then 16 (shifted back)
    result = sliding_window(numbered, torch.zeros(1, 1, h, w), tile, overlap, batch_size=4)[0, 0].double().numpy()
    starts = [0, 12, 16]
    t = np.arange(tile) - (tile - 1) / 2
    g1 = np.exp(-(t**2) / (2 * (0.125 * tile) ** 2))
    g = g1[:, None] * g1[None, :]
    num, den = np.zeros((h, w)), np.zeros((h, w))
    for k, (y, x) in enumerate(itertools.product(starts, starts)):  # windows run row by row
        num[y : y + tile, x : x + tile] += k * g
        den[y : y + tile, x : x + tile] += g
    np.testing.assert_allclose(result, num / den, rtol=1e-5)
    assert len(calls) == 9


def test_tiles_are_batched_across_window_rows():
    model = conv_net(3)
    sizes: list[int] = []
    forward = model_forward(model)

    def counting(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return forward(batch)

    x = images(n=2, h=40, w=40)
    with torch.no_grad():
        batched = sliding_window(counting, x, 16, 0.25, batch_size=4)  # 3 x 3 windows per image, 18 in all
        assert sizes == [4, 4, 1, 4, 4, 1]  # batches span window rows; each image is streamed by itself
        one_by_one = sliding_window(forward, x, 16, 0.25, batch_size=1)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-6, atol=1e-6)


def test_flip_tta_is_flip_equivariant_and_the_mean_of_the_flips():
    model = conv_net(3, seed=1)
    forward = model_forward(model)
    x = images(n=1, h=20, w=28)
    tta = flip_tta(forward)
    with torch.no_grad():
        out = tta(x)
        explicit = (forward(x) + forward(x.flip(-1)).flip(-1) + forward(x.flip(-2)).flip(-2) + forward(x.flip(-2, -1)).flip(-2, -1)) / 4
        torch.testing.assert_close(out, explicit)
        for dims in ((-1,), (-2,), (-2, -1)):
            torch.testing.assert_close(tta(x.flip(dims)), out.flip(dims), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(forward(x.flip(-1)), forward(x).flip(-1), atol=1e-4)  # the model itself is not equivariant
        # a pixelwise model is flip-equivariant already: TTA changes nothing
        local = conv_net(1)
        torch.testing.assert_close(predict_logits(local, x, tta=True), predict_logits(local, x), rtol=1e-5, atol=1e-6)
        # TTA also runs inside every window
        torch.testing.assert_close(predict_logits(local, x, tta=("h",), tile=8), predict_logits(local, x), rtol=1e-5, atol=1e-6)


def test_amp_is_a_no_op_on_cpu_and_outputs_are_float32():
    model = conv_net(3)
    x = images(n=1)
    with_amp = predict_logits(model, x, amp=True)
    assert with_amp.dtype == torch.float32 and torch.equal(with_amp, predict_logits(model, x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_on_gpu_is_close_to_float32():
    model = conv_net(3).cuda()
    x = images(n=2, h=64, w=64).cuda()
    full = predict_logits(model, x)
    half = predict_logits(model, x, amp=True, tile=32, overlap=0.5)
    assert half.dtype == torch.float32 and half.device.type == "cuda"
    torch.testing.assert_close(half, predict_logits(model, x, tile=32, overlap=0.5), rtol=0.05, atol=0.05)
    assert (full.argmax(1) == half.argmax(1)).float().mean() > 0.95


def test_auxiliary_outputs_and_bad_arguments():
    class WithAux(nn.Module):
        def forward(self, x):
            return x[:, :1] * 2, torch.zeros(x.shape[0], 4)

    x = images(n=1, h=8, w=8)
    torch.testing.assert_close(predict_logits(WithAux(), x), x[:, :1] * 2)
    shrinking = nn.Conv2d(2, 3, 3)  # valid convolution: output 2 pixels smaller
    with pytest.raises(SegkitError, match="turns a 8x8 input into 6x6 logits"):
        predict_logits(shrinking, x)
    model = conv_net(1)
    with pytest.raises(SegkitError, match="overlap must lie in"):
        predict_logits(model, x, tile=4, overlap=1.0)
    with pytest.raises(SegkitError, match="blend is 'box'"):
        predict_logits(model, x, tile=4, blend="box")
    with pytest.raises(SegkitError, match="unknown flip 'd'"):
        predict_logits(model, x, tta=("d",))
    with pytest.raises(SegkitError, match="tile must be"):
        predict_logits(model, x, tile=0)
