"""Decoders on small fake encoders: U-Net, FCN-32s/16s/8s, the original U-Net."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit import SegkitError
from segkit.decoders import FCNDecoder, UNetOriginal, UnetDecoder, switch_channels
from segkit.decoders.unet_original import unet_original_output_size
from segkit.encoders.base import Encoder, switches_2x2

MODES = ["transposed", "nearest", "bed_of_nails", "max_unpool"]


class PoolEncoder(Encoder):
    """VGG-like: conv + max-pool per level; switches[i] have level i's channels."""

    out_channels = (4, 6, 8, 10, 12)
    reductions = (2, 4, 8, 16, 32)
    first_conv = "convs.0"

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        widths = (in_channels, *self.out_channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        features, switches = [], []
        for conv in self.convs:
            x, idx = F.max_pool2d(torch.relu(conv(x)), 2, 2, return_indices=True)
            features.append(x)
            switches.append(idx)
        return features, switches if record_switches else []


class StridedEncoder(PoolEncoder):
    """ResNet-like: strided convolutions; switches[i] are a 2x2 max over level i - 1 (the image for i = 0)."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__(in_channels)
        widths = (in_channels, *self.out_channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))

    def forward_stages(self, x: Tensor, record_switches: bool) -> tuple[list[Tensor], list[Tensor]]:
        features, switches = [], []
        for conv in self.convs:
            switches.append(switches_2x2(x))
            x = torch.relu(conv(x))
            features.append(x)
        return features, switches if record_switches else []


ENCODERS = {"pool": PoolEncoder, "strided": StridedEncoder}


def run_decoder(decoder: nn.Module, encoder: Encoder, x: Tensor) -> Tensor:
    features, switches = encoder.forward_with_switches(x)
    return decoder(features, switches if decoder.upsampling == "max_unpool" else None, list(x.shape[-2:]))


def test_switch_channels_follow_the_encoder():
    assert switch_channels(PoolEncoder(in_channels=3)) == [4, 6, 8, 10, 12]
    assert switch_channels(StridedEncoder(in_channels=3)) == [3, 4, 6, 8, 10]
    encoder = PoolEncoder().train()
    switch_channels(encoder)
    assert encoder.training  # the probe restores the mode


# 70x90 is not a multiple of 32: the pooling encoder rounds down (35, 17, 8, 4, 2 rows), the strided
# one up (35, 18, 9, 5, 3); the decoders must still meet every skip and return the image's size.
SIZES = [(64, 96), (70, 90)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", sorted(ENCODERS))
@pytest.mark.parametrize("mode", MODES)
def test_unet_decoder_shapes(kind, mode, size):
    encoder = ENCODERS[kind]()
    decoder = UnetDecoder(encoder.out_channels, (16, 12, 8, 6, 5), mode, switch_channels(encoder) if mode == "max_unpool" else None)
    x = torch.randn(2, 1, *size)
    y = run_decoder(decoder, encoder, x)
    assert y.shape == (2, 5, *size) and decoder.out_channels == 5
    y.mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_unet_decoder_upsampling_channels():
    """transposed: up-conv to the block's width; nearest: channels kept; max_unpool: switch channels."""
    enc = StridedEncoder()
    widths = (16, 12, 8, 6, 5)
    ups = {mode: [b.up for b in UnetDecoder(enc.out_channels, widths, mode, switch_channels(enc)).blocks] for mode in MODES}
    assert [u.out_channels for u in ups["transposed"]] == [16, 12, 8, 6, 5]
    assert [u.out_channels for u in ups["nearest"]] == [12, 16, 12, 8, 6]
    # max_unpool projects to the switches' channels (10, 8, 6, 4, 1) unless they are narrower than
    # the block: then the channels coming up are kept and the switches reused cyclically.
    assert [u.out_channels for u in ups["max_unpool"]] == [12, 16, 12, 8, 6]
    narrow = [b.up for b in UnetDecoder(enc.out_channels, (10, 8, 6, 4, 5), "max_unpool", switch_channels(enc)).blocks]
    assert [u.out_channels for u in narrow] == [10, 8, 6, 4, 4]
    assert [u.reuse_switches for u in narrow] == [False, False, False, False, True]


def test_unet_decoder_matches_smp_with_nearest():
    """upsampling='nearest' is smp's U-Net decoder: same state-dict keys, same outputs."""
    smp_decoder = pytest.importorskip("segmentation_models_pytorch.decoders.unet.decoder")
    torch.manual_seed(0)
    channels = (3, 8, 8, 16, 24, 32)  # smp lists the image first
    theirs = smp_decoder.UnetDecoder(channels, (16, 12, 8, 6, 4)).eval()
    ours = UnetDecoder(channels[1:], (16, 12, 8, 6, 4), "nearest").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    features = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(channels)]
    with torch.no_grad():
        torch.testing.assert_close(ours(features[1:], None, [64, 64]), theirs(features))


def test_unet_decoder_errors():
    with pytest.raises(SegkitError, match="5 positive integers"):
        UnetDecoder((4, 6, 8, 10, 12), (16, 8))
    with pytest.raises(SegkitError, match="upsampling mode"):
        UnetDecoder((4, 6, 8, 10, 12), upsampling="bicubic")
    with pytest.raises(SegkitError, match="switch"):
        UnetDecoder((4, 6, 8, 10, 12), upsampling="max_unpool")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", sorted(ENCODERS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stride", [32, 16, 8, 4, 2])
def test_fcn_decoder_shapes(kind, mode, stride, size):
    encoder = ENCODERS[kind]()
    decoder = FCNDecoder(encoder.out_channels, 3, stride, mode, switch_channels=switch_channels(encoder) if mode == "max_unpool" else None)
    x = torch.randn(2, 1, *size)
    y = run_decoder(decoder, encoder, x)
    assert y.shape == (2, 3, *size)
    y.mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def _randomise(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_fcn_paper_initialisation():
    """Score layers start at zero (a fresh FCN predicts 0); the up-convs are bilinear."""
    encoder = PoolEncoder()
    decoder = FCNDecoder(encoder.out_channels, 3, 8, "transposed")
    assert torch.count_nonzero(run_decoder(decoder, encoder, torch.randn(1, 1, 64, 64))) == 0
    ups = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.stride[0] for u in ups] == [2, 2, 8] and [u.kernel_size[0] for u in ups] == [4, 4, 16]


def test_fcn_concat_fusion_starts_as_add():
    encoder = PoolEncoder()
    x = torch.randn(1, 1, 64, 64)
    outputs = []
    for fusion in ("add", "concat"):
        decoder = FCNDecoder(encoder.out_channels, 3, 8, "nearest", skip_fusion=fusion)
        _randomise(decoder.score)
        for f in decoder.fusions:
            _randomise(f.score, seed=1)
        outputs.append(run_decoder(decoder, encoder, x))
    assert outputs[0].abs().sum() > 0
    torch.testing.assert_close(outputs[0], outputs[1])


def test_fcn16s_fuses_pool4_scores():
    """fcn16s with nearest upsampling: 2x(score_fr) + score_pool4, then 16x nearest."""
    encoder = PoolEncoder()
    decoder = FCNDecoder(encoder.out_channels, 2, 16, "nearest")
    _randomise(decoder)
    features = encoder(torch.randn(1, 1, 64, 64))
    fused = F.interpolate(decoder.score(features[4]), scale_factor=2.0) + decoder.fusions[0].score(features[3])
    expected = F.interpolate(fused, scale_factor=16.0)
    torch.testing.assert_close(decoder(features, None, [64, 64]), expected)


def test_fcn2s_carries_the_skips_on_to_strides_4_and_2():
    """fcn2s with nearest upsampling: fcn8s's fused stride-8 scores, 2x + score of the stride-4
    features, 2x + score of the stride-2 features, 2x to the image; a fresh fcn2s predicts 0 and
    its transposed convolutions are all x2 bilinear steps."""
    encoder = PoolEncoder()
    decoder = FCNDecoder(encoder.out_channels, 2, 2, "nearest")
    assert [f.level for f in decoder.fusions] == [3, 2, 1, 0]  # features at strides 16, 8, 4, 2
    _randomise(decoder)
    features = encoder(torch.randn(1, 1, 64, 64))
    x = decoder.score(features[4])
    for fusion, level in zip(decoder.fusions, (3, 2, 1, 0)):
        x = F.interpolate(x, scale_factor=2.0) + fusion.score(features[level])
    torch.testing.assert_close(decoder(features, None, [64, 64]), F.interpolate(x, scale_factor=2.0))
    fresh = FCNDecoder(encoder.out_channels, 3, 2, "transposed")
    assert torch.count_nonzero(run_decoder(fresh, encoder, torch.randn(1, 1, 64, 64))) == 0
    ups = [m for m in fresh.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.stride[0] for u in ups] == [2] * 5 and [u.kernel_size[0] for u in ups] == [4] * 5


def test_fcn_vgg_head():
    decoder = FCNDecoder((64, 128, 256, 512, 512), 21, 8, fc_channels=32)
    fc6, fc7 = decoder.head[0], decoder.head[3]
    assert fc6.weight.shape == (32, 512, 7, 7) and fc6.padding == (3, 3)
    assert fc7.weight.shape == (32, 32, 1, 1)
    assert isinstance(FCNDecoder((4, 6, 8, 10, 12), 3).head, nn.Identity)


def test_fcn_errors():
    with pytest.raises(SegkitError, match="add, concat"):
        FCNDecoder((4, 6, 8, 10, 12), 3, skip_fusion="sum")
    with pytest.raises(SegkitError, match="32, 16, 8, 4, 2"):
        FCNDecoder((4, 6, 8, 10, 12), 3, stride=64)
    with pytest.raises(SegkitError, match="fc_channels"):
        FCNDecoder((4, 6, 8, 10, 12), 3, fc_channels=0)


def test_unet_original_parameter_count():
    """Figure 1 of Ronneberger et al. 2015: 31,030,658 parameters for 1 channel in, 2 classes out."""
    model = UNetOriginal(1, 2)
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    up_convs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) + len(up_convs) == 23  # the paper: "In total the network has 23 convolutional layers."
    assert all(m.padding == (0, 0) for m in convs) and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in UNetOriginal(1, 2, padding="same").parameters()) == 31_030_658


def test_unet_original_output_sizes():
    assert unet_original_output_size(572) == 388
    assert unet_original_output_size(188) == 4
    with pytest.raises(SegkitError, match="556 or 572"):
        unet_original_output_size(570)
    with pytest.raises(SegkitError, match="use 188"):
        unet_original_output_size(64)


@pytest.mark.parametrize("mode", MODES)
def test_unet_original_valid_smallest_input(mode):
    """188 = 16 * 8 + 60 is the smallest side the valid-convolution U-Net takes: 4x4 logits."""
    model = UNetOriginal(1, 2, upsampling=mode)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 188, 204)).shape == (1, 2, 4, 20)


def test_unet_original_same_padding_any_size():
    model = UNetOriginal(1, 3, padding="same")
    y = model(torch.randn(1, 1, 70, 90))
    assert y.shape == (1, 3, 70, 90)
    y.mean().backward()


def test_unet_original_max_unpool_uses_its_own_switches():
    """The max_unpool U-Net's first up-step puts values only where pool4 found maxima."""
    model = UNetOriginal(1, 2, upsampling="max_unpool").eval()
    captured = {}
    model.ups[0].register_forward_hook(lambda m, args, out: captured.setdefault("up", out))
    with torch.no_grad():
        model(torch.randn(1, 1, 188, 188))
    up = captured["up"]  # 512 channels on the 16x16 grid pool4 took to 8x8 (b = 8)
    assert up.shape == (1, 512, 16, 16)
    cells = up.reshape(1, 512, 8, 2, 8, 2)
    assert (cells != 0).sum(dim=(3, 5)).max() <= 1  # at most one value per 2x2 cell


def test_unet_original_errors():
    with pytest.raises(SegkitError, match="valid, same"):
        UNetOriginal(padding="full")
    with pytest.raises(SegkitError, match="16\\*b \\+ 60"):
        UNetOriginal()(torch.randn(1, 1, 64, 64))
    with pytest.raises(SegkitError, match=r"\(N, 1, H, W\); got shape \[1, 3, 64, 64\]"):
        UNetOriginal(padding="same")(torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_unet_original_572():
    with torch.no_grad():
        assert UNetOriginal(1, 2)(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_decoders_compile_with_torchscript(mode):
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
    encoder = StridedEncoder()
    sw = switch_channels(encoder)
    x = torch.randn(2, 1, 64, 96)
    features, switches = encoder.forward_with_switches(x)
    switches = switches if mode == "max_unpool" else None
    for decoder in (UnetDecoder(encoder.out_channels, (16, 12, 8, 6, 5), mode, sw), FCNDecoder(encoder.out_channels, 3, 8, mode, switch_channels=sw)):
        decoder.eval()
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(decoder)(features, switches, [64, 96]), decoder(features, switches, [64, 96]))


def test_fcn_max_unpool_never_squeezes_scores_through_the_images_channels():
    """Grey input: the last step's switches have 1 channel; the 3 class scores must not pass through it."""
    encoder = StridedEncoder()
    channels = switch_channels(encoder)
    decoder = FCNDecoder(encoder.out_channels, 3, 8, "max_unpool", switch_channels=channels)
    last = decoder.upsample.steps[-1]
    assert channels[0] == 1 and last.reuse_switches and last.out_channels >= 3
    assert min(step.out_channels for step in decoder.upsample.steps) >= 3
