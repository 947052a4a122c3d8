"""The four upsampling modes: hand-worked examples, the bilinear up-conv, the Upsample module."""

import pytest
import torch
import torch.nn.functional as F

from segkit import SegkitError
from segkit.decoders import Upsample, bed_of_nails, bilinear_kernel, max_unpool, nearest_upsample
from segkit.decoders.upsample import fit_to

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # (1, 1, 2, 2)


def test_nearest_by_hand():
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32)
    assert torch.equal(nearest_upsample(X), expected[None, None])


def test_bed_of_nails_by_hand():
    expected = torch.tensor([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(bed_of_nails(X), expected[None, None])


def test_max_unpool_by_hand():
    pooled_input = torch.tensor([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]], dtype=torch.float32)[None, None]
    maxima, switches = F.max_pool2d(pooled_input, 2, 2, return_indices=True)
    assert torch.equal(maxima, torch.tensor([[5.0, 6.0], [7.0, 8.0]])[None, None])
    expected = torch.tensor([[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]], dtype=torch.float32)
    assert torch.equal(max_unpool(X, switches), expected[None, None])
    assert torch.equal(max_unpool(X, switches, output_size=[4, 4]), expected[None, None])


def test_max_unpool_odd_output_size():
    """A 5x5 map pooled (floor) to 2x2 unpools back to 5x5 when told the size."""
    source = torch.arange(25.0).reshape(1, 1, 5, 5)
    maxima, switches = F.max_pool2d(source, 2, 2, return_indices=True)
    out = max_unpool(maxima, switches, output_size=[5, 5])
    assert out.shape == (1, 1, 5, 5)
    assert torch.equal(out[out != 0], torch.tensor([6.0, 8.0, 16.0, 18.0]))


def test_bed_of_nails_scale_and_channels():
    x = torch.randn(2, 3, 3, 5)
    y = bed_of_nails(x, scale=4)
    assert y.shape == (2, 3, 12, 20)
    assert torch.equal(y[..., ::4, ::4], x)
    assert y.count_nonzero() == x.count_nonzero()
    assert torch.equal(nearest_upsample(x, 3)[..., 1::3, 2::3], x)


def test_transposed_conv_by_hand():
    """The 2x2 / stride-2 up-conv puts weight * value (+ bias) into each value's block."""
    up = Upsample("transposed", 1, 1)
    with torch.no_grad():
        up.conv.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None])
        up.conv.bias.fill_(0.5)
    expected = torch.tensor(
        [
            [1.5, 2.5, 2.5, 4.5],
            [3.5, 4.5, 6.5, 8.5],
            [3.5, 6.5, 4.5, 8.5],
            [9.5, 12.5, 12.5, 16.5],
        ]
    )
    assert torch.equal(up(X), expected[None, None])


def test_bilinear_transposed_conv_by_hand():
    """FCN's 2x deconvolution: kernel 4, stride 2, padding 1, taps (1/4, 3/4, 3/4, 1/4) per axis.

    Per axis [a, b] -> [3a/4, 3a/4 + b/4, a/4 + 3b/4, 3b/4]; applied to rows then columns of
    [[1, 3], [5, 7]].
    """
    up = Upsample("transposed", 1, 1, scale=2, bilinear_init=True)
    assert up.conv.kernel_size == (4, 4) and up.conv.stride == (2, 2) and up.conv.padding == (1, 1) and up.conv.bias is None
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(up.conv.weight[0, 0], taps[:, None] * taps[None, :])
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])[None, None]
    expected = torch.tensor(
        [
            [0.5625, 1.125, 1.875, 1.6875],
            [1.5, 2.5, 3.5, 3.0],
            [3.0, 4.5, 5.5, 4.5],
            [2.8125, 4.125, 4.875, 3.9375],
        ]
    )
    torch.testing.assert_close(up(x), expected[None, None])


@pytest.mark.parametrize("scale", [2, 3, 4, 8, 32])
def test_bilinear_init_equals_interpolate_away_from_borders(scale):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7)
    up = Upsample("transposed", 3, 3, scale=scale, bilinear_init=True)
    with torch.no_grad():
        y = up(x)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, 6 * scale, 7 * scale)
    torch.testing.assert_close(y[..., scale:-scale, scale:-scale], ref[..., scale:-scale, scale:-scale])
    weight = bilinear_kernel(3, 4)  # each channel upsampled on its own
    assert torch.count_nonzero(weight[0, 1]) == 0 and torch.equal(weight[2, 2], weight[0, 0])


@pytest.mark.parametrize("mode", ["transposed", "nearest", "bed_of_nails", "max_unpool"])
@pytest.mark.parametrize("channels", [(6, 6), (6, 4)])
def test_upsample_module_shapes(mode, channels):
    c_in, c_out = channels
    source = torch.randn(2, c_out, 10, 14)
    _, switches = F.max_pool2d(source, 2, 2, return_indices=True)
    x = torch.randn(2, c_in, 5, 7, requires_grad=True)
    up = Upsample(mode, c_in, c_out)
    y = up(x, indices=switches, output_size=[10, 14])
    assert y.shape == (2, c_out, 10, 14)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert sum(p.numel() for p in up.parameters()) == {
        "transposed": c_in * c_out * 4 + c_out,
    }.get(mode, 0 if c_in == c_out else c_in * c_out + c_out)


def test_upsample_output_size_crops_or_pads():
    x = torch.randn(1, 2, 4, 4)
    assert Upsample("nearest", 2, 2)(x, output_size=[7, 9]).shape == (1, 2, 7, 9)
    assert Upsample("bed_of_nails", 2, 2)(x, output_size=[9, 7]).shape == (1, 2, 9, 7)
    assert torch.equal(fit_to(x, [3, 5])[..., :3, :4], x[..., :3, :4])
    assert fit_to(x, [4, 4]) is x


def test_upsample_errors():
    with pytest.raises(SegkitError, match="transposed, nearest, bed_of_nails, max_unpool"):
        Upsample("bicubic", 4, 4)
    with pytest.raises(SegkitError, match="indices"):
        Upsample("max_unpool", 4, 4)(torch.randn(1, 4, 2, 2))
    with pytest.raises(SegkitError, match="scale=2"):
        Upsample("max_unpool", 4, 4, scale=4)
    with pytest.raises(SegkitError, match="channels to themselves"):
        Upsample("transposed", 4, 2, bilinear_init=True)
    with pytest.raises(SegkitError, match="positive integer"):
        Upsample("nearest", 4, 4, scale=0)
    _, switches = F.max_pool2d(torch.randn(1, 3, 4, 4), 2, 2, return_indices=True)
    with pytest.raises(SegkitError, match="switches"):
        max_unpool(torch.randn(1, 4, 2, 2), switches)


def test_reused_switches_unpool_every_channel_at_the_positions_of_channel_c_mod_C():
    x = torch.randn(2, 5, 3, 4)
    _, switches = torch.nn.functional.max_pool2d(torch.randn(2, 2, 6, 8), 2, return_indices=True)
    up = Upsample("max_unpool", 5, 5, reuse_switches=True)
    out = up(x, indices=switches, output_size=[6, 8])
    for c in range(5):
        torch.testing.assert_close(out[:, c : c + 1], max_unpool(x[:, c : c + 1], switches[:, c % 2 : c % 2 + 1], [6, 8]))
    with pytest.raises(SegkitError, match="reuse_switches applies to the 'max_unpool' mode only"):
        Upsample("nearest", 4, 4, reuse_switches=True)
