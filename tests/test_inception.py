"""GoogLeNet and Inception-v3: torchvision checkpoints load and agree, encoders, switches, input checks."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import segkit
import segkit.encoders.googlenet  # noqa: F401  (registers "googlenet")
from segkit import SegkitError
from segkit.encoders import adapt_first_conv, load_weights, read_checkpoint
from tests._oracles import count_params, randomize_norm_stats, save_state, shapes, torchvision_model

TV_KWARGS = {"aux_logits": True, "init_weights": True}
FIRST_CONV = {"googlenet": "conv1.conv.weight", "inception_v3": "Conv2d_1a_3x3.conv.weight"}


def well_conditioned(model: nn.Module, size: int, seed: int) -> nn.Module:
    """Random BN affine parameters, and running statistics measured on random images.

    Non-trivial statistics catch a misplaced norm layer; measured ones keep the activations of these
    deep nets O(1) in eval mode (with made-up ones they grow ~4x per layer and drown the comparison).
    """
    randomize_norm_stats(model, seed)
    aux = getattr(model, "AuxLogits", None)
    if aux is not None:  # its 5x5 convolution needs 299x299 images; its BNs keep made-up statistics
        model.AuxLogits = None
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the statistics of the one batch below
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    for m in norms:
        m.momentum = 0.1
    if aux is not None:
        model.AuxLogits = aux
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """name -> path of a state dict saved from torchvision's model (random weights, non-trivial BN)."""
    folder = tmp_path_factory.mktemp("inception")
    paths = {}
    for seed, (name, size) in enumerate((("googlenet", 64), ("inception_v3", 75))):
        torch.manual_seed(seed)
        model = well_conditioned(torchvision_model(name, **TV_KWARGS), size, seed)
        paths[name] = save_state(model, folder / f"{name}.pth")
    return paths


def reference(name: str, path, **kwargs) -> torch.nn.Module:
    """A fresh torchvision model holding the checkpoint (built on meta, then given the file's tensors)."""
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, aux_logits=True, init_weights=False, **kwargs)
    model.load_state_dict(read_checkpoint(path), assign=True)
    return model


def assert_close(a, b):
    assert b.abs().max() > 1e-3  # the comparison means something
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- layout and parameter counts ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
@pytest.mark.parametrize("aux", [True, False])
def test_layout_and_parameter_count_equal_torchvision(name, aux):
    with torch.device("meta"):
        ours = segkit.create_classifier(name, aux_logits=aux)
        theirs = torchvision_model(name, aux_logits=aux, init_weights=False)
    assert list(shapes(ours).items()) == list(shapes(theirs).items())  # names, shapes and order
    assert count_params(ours) == count_params(theirs)
    published = {("googlenet", False): 6_624_904, ("inception_v3", True): 27_161_264}  # torchvision's weight metadata
    assert count_params(ours) == published.get((name, aux), count_params(theirs))


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_encoder_is_the_classifier_without_its_heads(name):
    with torch.device("meta"):
        encoder = segkit.create_encoder(name)
        classifier = segkit.create_classifier(name)
    heads = encoder.checkpoint_ignore
    assert shapes(encoder) == {k: v for k, v in shapes(classifier).items() if not k.startswith(heads)}
    assert all(any(k.startswith(p) for k in shapes(classifier)) for p in heads)


# --- torchvision checkpoints: same logits, same auxiliary logits -------------------------------


@pytest.mark.parametrize(("name", "size"), [("googlenet", 64), ("inception_v3", 75)])
@pytest.mark.parametrize("transform", [True, False])
def test_checkpoint_gives_torchvision_logits(checkpoint, name, size, transform):
    """With 3-channel weights transform_input is on by default, as torchvision does for its weights."""
    theirs = reference(name, checkpoint[name], transform_input=transform).eval()
    kwargs = {} if transform else {"transform_input": False}
    ours = segkit.create_classifier(name, weights=checkpoint[name], **kwargs).eval()
    assert ours.transform_input is transform
    x = torch.randn(2, 3, size, size + 16)
    with torch.no_grad():
        assert_close(ours(x), theirs(x))


def test_googlenet_training_mode_returns_both_auxiliary_logits(checkpoint):
    """Same seed, same dropout masks: every output equals torchvision's (which orders them aux2, aux1)."""
    theirs = reference("googlenet", checkpoint["googlenet"]).train()
    ours = segkit.create_classifier("googlenet", weights=checkpoint["googlenet"], transform_input=False).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(1)
        logits, aux2, aux1 = theirs(x)
        torch.manual_seed(1)
        out = ours(x)
    assert isinstance(out, tuple) and len(out) == 3
    for a, b in zip(out, (logits, aux1, aux2), strict=True):
        assert_close(a, b)
    ours.eval()
    assert isinstance(ours(x), torch.Tensor)


def test_inception_v3_training_mode_returns_auxiliary_logits(checkpoint):
    theirs = reference("inception_v3", checkpoint["inception_v3"]).train()
    ours = segkit.create_classifier("inception_v3", weights=checkpoint["inception_v3"], transform_input=False).train()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        torch.manual_seed(1)
        logits, aux = theirs(x)
        torch.manual_seed(1)
        out = ours(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert_close(out[0], logits)
    assert_close(out[1], aux)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_without_auxiliary_heads(checkpoint, name):
    """aux_logits=False: logits only, also in training mode; a file with the heads loads when they are ignored."""
    model = segkit.create_classifier(name, aux_logits=False)
    assert not any(".fc2." in k or "AuxLogits" in k for k in model.state_dict())
    load_weights(model, checkpoint[name], first_conv=model.first_conv, head_prefixes=model.head_prefixes,
                 ignore_prefixes=model.checkpoint_ignore)
    out = model.train()(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_other_head_size_is_reinitialised_and_logged(checkpoint, name, caplog):
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = segkit.create_classifier(name, num_classes=7, weights=checkpoint[name])
    state = read_checkpoint(checkpoint[name])
    heads = ["fc", "aux1.fc2", "aux2.fc2"] if name == "googlenet" else ["AuxLogits.fc", "fc"]
    assert f"classification layer(s) {', '.join(sorted(heads))} have another number of classes" in caplog.text
    for head in heads:
        assert model.get_submodule(head).out_features == 7
    body = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in heads}
    assert all(torch.equal(v, state[k]) for k, v in body.items())


# --- in_channels and transform_input -----------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("googlenet", 64), ("inception_v3", 75)])
def test_one_channel_adaptation(checkpoint, name, size):
    """The first convolution is adapt_first_conv of the file's; a grey image gives torchvision's logits."""
    state = read_checkpoint(checkpoint[name])
    ours = segkit.create_classifier(name, in_channels=1, weights=checkpoint[name]).eval()
    encoder = segkit.create_encoder(name, in_channels=1, weights=checkpoint[name])
    expected = adapt_first_conv(state[FIRST_CONV[name]], 1)
    torch.testing.assert_close(ours.state_dict()[FIRST_CONV[name]], expected)
    torch.testing.assert_close(encoder.state_dict()[FIRST_CONV[name]], expected)
    assert not ours.transform_input and not encoder.transform_input  # rescales RGB only
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        got, expected = ours(x), reference(name, checkpoint[name]).eval()(x.repeat(1, 3, 1, 1))
    # Summing the filters first reorders float additions; ~60 layers amplify that to ~1e-4 of the scale.
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_transform_input_defaults(checkpoint, name):
    """On with 3-channel weights (as torchvision loads its Inception weights), off otherwise or when told."""
    assert segkit.create_encoder(name, weights=checkpoint[name]).transform_input is True
    with torch.device("meta"):  # no weights: nothing to compute
        assert segkit.create_encoder(name).transform_input is False
        assert segkit.create_classifier(name).transform_input is False
        grey = segkit.create_classifier(name, in_channels=1, transform_input=True).eval()
        with pytest.raises(SegkitError, match="transform_input rescales the three ImageNet RGB channels"):
            grey(torch.randn(1, 1, 96, 96))



def test_transform_input_takes_a_bool_and_only_where_it_exists():
    """transform_input="false" read as on, and the option vanished without a word on other models."""
    with torch.device("meta"):
        for make in (segkit.create_classifier, segkit.create_encoder):
            with pytest.raises(SegkitError, match=r"transform_input must be True or False .*got 'false'"):
                make("googlenet", transform_input="false")
        with pytest.raises(SegkitError, match=r"^classifier 'resnet18' has no transform_input \(only googlenet and inception_v3"):
            segkit.create_classifier("resnet18", transform_input=True)
        with pytest.raises(SegkitError, match=r"^encoder 'vgg16' has no transform_input"):
            segkit.create_encoder("vgg16", transform_input=False)
        assert segkit.create_classifier("googlenet", transform_input=False).transform_input is False
        assert segkit.create_encoder("inception_v3", transform_input=True).transform_input is True


# --- encoders ----------------------------------------------------------------------------------


def test_googlenet_encoder_features_equal_torchvision_activations(checkpoint):
    theirs = reference("googlenet", checkpoint["googlenet"], transform_input=True).eval()
    encoder = segkit.create_encoder("googlenet", weights=checkpoint["googlenet"]).eval()
    assert encoder.transform_input
    names = ["conv1", "conv3", "inception3b", "inception4e", "inception5b"]
    got: dict[str, torch.Tensor] = {}
    for n in names:
        theirs.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.clone()))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        theirs(x)
        features = encoder(x)
    for feature, n in zip(features, names, strict=True):
        assert_close(feature, got[n])


class _SamePaddedPools:
    """Stands in for torch.nn.functional inside torchvision's inception module: pads its max-pools."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def max_pool2d(x, kernel_size, stride):
        return F.max_pool2d(x, kernel_size, stride, padding=1)


def test_inception_v3_encoder_is_torchvision_with_same_padding(checkpoint, monkeypatch):
    """Oracle: torchvision's model with padding added where the module doc says; same activations."""
    theirs = reference("inception_v3", checkpoint["inception_v3"], transform_input=True).eval()
    for conv in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_4a_3x3", "Mixed_6a.branch3x3", "Mixed_6a.branch3x3dbl_3",
                 "Mixed_7a.branch3x3_2", "Mixed_7a.branch7x7x3_4"):
        theirs.get_submodule(conv).conv.padding = (1, 1)
    theirs.maxpool1.padding = theirs.maxpool2.padding = 1
    monkeypatch.setattr(torchvision.models.inception, "F", _SamePaddedPools())
    names = ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]
    got: dict[str, torch.Tensor] = {}
    for n in names:
        theirs.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.clone()))
    encoder = segkit.create_encoder("inception_v3", weights=checkpoint["inception_v3"]).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        theirs(x)
        features = encoder(x)
    for feature, n in zip(features, names, strict=True):
        assert_close(feature, got[n])


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_encoder_maps_are_exactly_h_over_r(name):
    with torch.device("meta"):  # shapes only
        encoder = segkit.create_encoder(name).eval()
        assert encoder.out_channels == {"googlenet": (64, 192, 480, 832, 1024), "inception_v3": (64, 192, 288, 768, 2048)}[name]
        for h, w in [(64, 64), (96, 128), (32, 32), (224, 320)]:
            features, switches = encoder.forward_with_switches(torch.randn(1, 3, h, w))
            expected = [(1, c, h // r, w // r) for c, r in zip(encoder.out_channels, encoder.reductions, strict=True)]
            assert [tuple(f.shape) for f in features] == expected
            assert [tuple(s.shape[-2:]) for s in switches] == [e[-2:] for e in expected]
            assert all(s.dtype == torch.int64 for s in switches)


def assert_switches_of_pool(source, switches, kernel, stride, padding, ceil_mode):
    """``switches`` are the argmax positions of a kernel/stride/padding max-pool over ``source``."""
    pooled = F.max_pool2d(source, kernel, stride, padding, ceil_mode=ceil_mode)
    assert switches.shape == pooled.shape
    height, width = source.shape[-2:]
    # Each position lies inside its own window ...
    rows, cols = switches // width, switches % width
    top = torch.arange(pooled.shape[-2]).view(-1, 1) * stride - padding
    left = torch.arange(pooled.shape[-1]).view(1, -1) * stride - padding
    assert ((rows >= top) & (rows < top + kernel) & (cols >= left) & (cols < left + kernel)).all()
    # ... and holds that window's maximum, which max_unpool2d puts back there.
    torch.testing.assert_close(source.flatten(2).gather(2, switches.flatten(2)), pooled.flatten(2))
    restored = F.max_unpool2d(pooled, switches, kernel, stride, padding, output_size=(height, width))
    torch.testing.assert_close(restored.flatten(2).gather(2, switches.flatten(2)), pooled.flatten(2))


# (kernel, stride, padding, ceil_mode) of the pooling whose switches each level records; level 0 and
# the strided-convolution levels record a 2x2 max over their input (segkit.encoders.base).
POOLS = {
    "googlenet": [(2, 2, 0, True), (3, 2, 0, True), (3, 2, 0, True), (3, 2, 0, True), (2, 2, 0, True)],
    "inception_v3": [(2, 2, 0, True), (3, 2, 1, False), (3, 2, 1, False), (2, 2, 0, True), (2, 2, 0, True)],
}


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_switches_point_at_the_maxima(name):
    """switches[i] come from the previous level (the image for i = 0): each level's input here."""
    torch.manual_seed(0)
    encoder = segkit.create_encoder(name, in_channels=2).eval()
    x = torch.randn(2, 2, 64, 96)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
        plain = encoder(x)
    for source, sw, pool in zip([x, *features[:-1]], switches, POOLS[name], strict=True):
        assert_switches_of_pool(source, sw, *pool)
    for a, b in zip(plain, features, strict=True):  # recording switches changes no feature
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- input checks ------------------------------------------------------------------------------


def test_too_small_inputs_get_clear_errors():
    with torch.device("meta"):  # shapes only: where torch itself would fail, segkit must say why first
        googlenet = segkit.create_classifier("googlenet").eval()
        assert googlenet(torch.randn(1, 3, 15, 15)).shape == (1, 1000)  # torchvision's minimum
        with pytest.raises(SegkitError, match="at least 15x15"):
            googlenet(torch.randn(1, 3, 14, 64))
        inception = segkit.create_classifier("inception_v3").eval()
        assert inception(torch.randn(1, 3, 75, 75)).shape == (1, 1000)
        with pytest.raises(SegkitError, match="at least 75x75"):
            inception(torch.randn(1, 3, 74, 80))
        assert inception.train()(torch.randn(2, 3, 299, 299))[1].shape == (2, 1000)
        with pytest.raises(SegkitError, match="at least 299x299"):  # the auxiliary head, training mode
            inception(torch.randn(2, 3, 298, 299))
        with pytest.raises(SegkitError, match="built for 3 input channels"):
            googlenet(torch.randn(1, 1, 32, 32))
        with pytest.raises(SegkitError, match=r"\(N, C, H, W\)"):
            googlenet(torch.randn(3, 32, 32))
        for name in ("googlenet", "inception_v3"):
            encoder = segkit.create_encoder(name).eval()
            assert encoder(torch.randn(1, 3, 32, 32))[-1].shape[-2:] == (1, 1)
            with pytest.raises(SegkitError, match="at least 32x32"):
                encoder(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize(("name", "size"), [("googlenet", 64), ("inception_v3", 80)])
def test_a_torchvision_file_without_auxiliary_heads_loads_and_they_start_fresh(tmp_path, name, size, caplog):
    """torchvision builds googlenet(weights=...) without aux heads, so a fine-tuned copy's file lacks
    them: it was refused as 'not the checkpoint of this architecture'."""
    import logging

    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(aux_logits=False, init_weights=True).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = segkit.create_classifier(name, weights=tmp_path / "w.pth").eval()
    assert "keep their fresh initialisation" in caplog.text
    reference.transform_input = model.transform_input
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
