"""LeNet-5 and AlexNet along their papers' tables; checkpoints of the same nets reload."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import segkit
from segkit import SegkitError
from segkit.encoders import adapt_first_conv
from segkit.encoders.classic import Subsampling, lenet_squash
from tests._oracles import count_params, save_state

# Table I of LeCun et al. 1998, as printed: rows are S2 maps 0-5, columns C3 maps 0-15.
TABLE_I = [
    "X   XXX  XXXX XX",
    "XX   XXX  XXXX X",
    "XXX   XXX  X XXX",
    " XXX  XXXX  X XX",
    "  XXX  XXXX XX X",
    "   XXX  XXXX XXX",
]


def layer_outputs(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))) for n in names]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


# --- LeNet-5 -----------------------------------------------------------------------------------


def test_lenet5_parameters_per_layer_match_the_paper():
    model = segkit.create_classifier("lenet5", in_channels=1)
    per_layer = {name: count_params(model.get_submodule(name)) for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output")}
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48_120, "f6": 10_164, "output": 85 * 10}
    assert count_params(model) == 60_850


def test_lenet5_output_shapes_match_the_paper():
    model = segkit.create_classifier("lenet5", in_channels=1)
    names = ["c1", "s2", "c3", "s4", "c5", "f6", "output"]
    assert layer_outputs(model, names, torch.randn(2, 1, 32, 32)) == {
        "c1": (6, 28, 28), "s2": (6, 14, 14), "c3": (16, 10, 10), "s4": (16, 5, 5),
        "c5": (120, 1, 1), "f6": (84,), "output": (10,),
    }  # fmt: skip


def test_lenet5_c3_follows_table_i():
    """C3 map j responds to S2 map i exactly where Table I has an X (gradients of the real layer)."""
    c3 = segkit.create_classifier("lenet5", in_channels=1).c3
    s2 = torch.randn(1, 6, 14, 14, requires_grad=True)
    for j in range(16):
        (grad,) = torch.autograd.grad(c3(s2)[0, j].sum(), s2)
        seen = {i for i in range(6) if grad[0, i].abs().sum() > 0}
        assert seen == {i for i in range(6) if TABLE_I[i][j] == "X"}, f"C3 map {j}"
    assert c3.dense_weight().shape == (16, 6, 5, 5)


def test_lenet5_subsampling_and_squashing_are_the_papers():
    s = Subsampling(3)
    x = torch.randn(2, 3, 4, 6)
    cells = x.unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))  # sum of each 2x2 cell
    torch.testing.assert_close(s(x), cells * s.weight.view(1, -1, 1, 1) + s.bias.view(1, -1, 1, 1))
    # f(a) = A tanh(S a) with A = 1.7159, S = 2/3: f(1) = 1, f(-1) = -1, f(0) = 0 (Appendix A).
    torch.testing.assert_close(lenet_squash(torch.tensor([1.0, -1.0, 0.0])), torch.tensor([1.0, -1.0, 0.0]), atol=1e-4, rtol=0)


def test_lenet5_initialisation_is_uniform_2_4_over_fan_in():
    torch.manual_seed(0)
    model = segkit.create_classifier("lenet5", in_channels=1)
    for name, fan_in in [("c1", 25), ("c5", 400), ("f6", 120)]:
        weight = model.get_submodule(name).weight
        assert weight.abs().max() <= 2.4 / fan_in and weight.abs().max() > 0.9 * 2.4 / fan_in


def test_lenet5_takes_32x32_only():
    model = segkit.create_classifier("lenet5", in_channels=1)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    with pytest.raises(SegkitError, match="takes 32x32 images; got 28x28"):
        model(torch.randn(1, 1, 28, 28))


def test_lenet5_checkpoint_reloads_with_new_head_and_channels(tmp_path, caplog):
    torch.manual_seed(0)
    source = segkit.create_classifier("lenet5", num_classes=10, in_channels=3)
    path = save_state(source, tmp_path / "lenet5.pth")
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = segkit.create_classifier("lenet5", num_classes=4, in_channels=1, weights=path).eval()
    assert "output have another number of classes" in caplog.text
    assert model.output.out_features == 4
    torch.testing.assert_close(model.c1.weight, adapt_first_conv(source.c1.weight, 1))
    for name in ("c3.weight", "s2.weight", "s4.bias", "c5.weight", "f6.weight"):
        torch.testing.assert_close(model.state_dict()[name], source.state_dict()[name])
    # A grey image through the adapted net = the same image repeated over RGB through the original.
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model.output.load_state_dict({k: v[:4] for k, v in source.output.state_dict().items()})
        torch.testing.assert_close(model(x), source(x.repeat(1, 3, 1, 1))[:, :4], rtol=1e-4, atol=1e-5)
    assert segkit.create_classifier("lenet5", num_classes=10, in_channels=3, weights=path).state_dict().keys() == source.state_dict().keys()


# --- AlexNet -----------------------------------------------------------------------------------


def test_alexnet_has_62_378_344_parameters():
    with torch.device("meta"):
        model = segkit.create_classifier("alexnet")
    assert count_params(model) == 62_378_344
    per_layer = {n: count_params(m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert per_layer == {
        "features.conv1": 96 * 3 * 11 * 11 + 96, "features.conv2": 256 * 96 * 25 + 256,
        "features.conv3": 384 * 256 * 9 + 384, "features.conv4": 384 * 384 * 9 + 384,
        "features.conv5": 256 * 384 * 9 + 256, "classifier.fc6": 9216 * 4096 + 4096,
        "classifier.fc7": 4096 * 4096 + 4096, "classifier.fc8": 4096 * 1000 + 1000,
    }  # fmt: skip


def test_alexnet_output_shapes_match_the_paper():
    """Figure 2 / Section 3.5 at 227x227 (shapes on the meta device: no computation)."""
    with torch.device("meta"):
        model = segkit.create_classifier("alexnet").eval()
        names = ["features.conv1", "features.pool1", "features.conv2", "features.pool2", "features.conv3",
                 "features.conv4", "features.conv5", "features.pool5", "classifier.fc6", "classifier.fc7", "classifier.fc8"]
        shapes = layer_outputs(model, names, torch.randn(1, 3, 227, 227))
    assert [shapes[n] for n in names] == [
        (96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 13, 13), (384, 13, 13),
        (384, 13, 13), (256, 13, 13), (256, 6, 6), (4096,), (4096,), (1000,),
    ]  # fmt: skip
    # ReLU, then normalisation, then pooling after conv1 and conv2; dropout after fc6 and fc7.
    assert [n for n, _ in model.features.named_children()][:8] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]
    assert [n for n, _ in model.classifier.named_children()] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    assert model.classifier.drop6.p == model.classifier.drop7.p == 0.5
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools) and len(pools) == 3  # overlapping


def test_alexnet_response_normalisation_is_the_papers_formula():
    """b_i = a_i / (k + alpha * sum_{j = i - n/2}^{i + n/2} a_j^2) ^ beta, k = 2, n = 5, alpha = 1e-4, beta = 0.75."""
    with torch.device("meta"):
        model = segkit.create_classifier("alexnet")
    norm = model.features.norm1  # no tensors of its own
    a = torch.rand(2, 12, 3, 3) * 20  # ReLU outputs, large enough for the normalisation to matter
    expected = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        window = a[:, max(0, i - 2) : min(channels, i + 3)]
        expected[:, i] = a[:, i] / (2 + 1e-4 * (window**2).sum(1)) ** 0.75
    torch.testing.assert_close(norm(a), expected)
    torch.testing.assert_close(model.features.norm2(a), expected)


def test_alexnet_checkpoint_round_trip_and_initialisation(tmp_path, caplog):
    """Paper's init; the file reloads with another head (logged) and into one input channel."""
    torch.manual_seed(0)
    source = segkit.create_classifier("alexnet", num_classes=10)
    for name, m in source.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bias = 1.0 if name in {"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"} else 0.0
            assert torch.all(m.bias == bias), name
    assert abs(source.features.conv2.weight.std().item() - 0.01) < 1e-4
    path = save_state(source, tmp_path / "alexnet.pth")
    with caplog.at_level(logging.INFO, logger="segkit"):
        model = segkit.create_classifier("alexnet", num_classes=3, in_channels=1, weights=path).eval()
    assert "classifier.fc8 have another number of classes" in caplog.text
    assert model.classifier.fc8.out_features == 3
    torch.testing.assert_close(model.features.conv1.weight, adapt_first_conv(source.features.conv1.weight, 1))
    torch.testing.assert_close(model.classifier.fc7.weight, source.classifier.fc7.weight)
    x = torch.rand(1, 1, 227, 227)
    with torch.no_grad():
        features = model.features(x)
        torch.testing.assert_close(features, source.eval().features(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    assert model(x).shape == (1, 3)


def test_alexnet_input_size_check():
    with torch.device("meta"):
        model = segkit.create_classifier("alexnet").eval()
        assert model(torch.randn(1, 3, 67, 67)).shape == (1, 1000)  # smallest size with a 1x1 pool5
        with pytest.raises(SegkitError, match="at least 67x67"):
            model(torch.randn(1, 3, 66, 227))
        with pytest.raises(SegkitError, match="built for 3 input channels"):
            model(torch.randn(1, 1, 227, 227))


def test_classic_nets_train():
    """One SGD step lowers the loss on a fixed batch (gradients reach every parameter)."""
    torch.manual_seed(0)
    model = segkit.create_classifier("lenet5", in_channels=1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert F.cross_entropy(model(x), y) < loss


@pytest.mark.parametrize("name", ["resnet18", "resnet18_a", "plain18", "cifar_resnet20", "cifar_plain20"])
def test_resnet_classifiers_name_a_wrong_channel_count(name):
    """They gave torch's 'Given groups=1, weight of size [64, 3, 7, 7]' where the other nets say what to do."""
    with torch.device("meta"):
        model = segkit.create_classifier(name).eval()
        with pytest.raises(SegkitError, match="built for 3 input channels but the batch has 1; create it with in_channels=1"):
            model(torch.randn(2, 1, 32, 32))
        assert model(torch.randn(2, 3, 32, 32)).shape[0] == 2
