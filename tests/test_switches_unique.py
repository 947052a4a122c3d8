"""Max-unpooling with switches of overlapping pools: repeats removed, first window kept, deterministic.

The 3x3 / stride-2 pools of the ResNet stem, GoogLeNet and Inception-v3 can name one input position
in two windows. ``unique_switches`` keeps the first (raster order) and marks the others -1, and
``max_unpool`` scatters each position's value once; the reference here is a plain Python loop.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segkit
from segkit.decoders import Upsample, max_unpool
from segkit.decoders.upsample import unique_switches


def stem_switches(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(switches of the encoder's first overlapping 3x3 / stride-2 pool, the map they index)."""
    torch.manual_seed(seed)
    encoder = segkit.create_encoder(name).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features, switches = encoder.forward_with_switches(x)
    return switches[1], features[0]  # level 1's switches index level 0 (the stem's output)


def reference_unpool(values: np.ndarray, switches: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each position receives the value of the first window (raster order) whose switch names it."""
    n, c = values.shape[:2]
    out = np.zeros((n, c, size[0] * size[1]), dtype=values.dtype)
    for i in range(n):
        for j in range(c):
            taken: set[int] = set()
            for v, p in zip(values[i, j].ravel(), switches[i, j].ravel()):
                if p not in taken:
                    taken.add(int(p))
                    out[i, j, p] = v
    return out.reshape(n, c, *size)


def planes_with_repeats(switches: torch.Tensor) -> int:
    flat = switches.flatten(2)
    return sum(len(set(row.tolist()) - {-1}) != int((row >= 0).sum()) for row in flat.flatten(0, 1))


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "inception_v3"])
def test_switches_of_overlapping_pools_are_made_unique(name):
    raw, level0 = stem_switches(name)
    # The raw switches do repeat (ReLU zeros and shared maxima): otherwise this test proves nothing.
    assert planes_with_repeats(raw) > 0
    unique = unique_switches(raw, level0.shape[-2] * level0.shape[-1])
    assert planes_with_repeats(unique) == 0
    assert unique.shape == raw.shape and unique.dtype == torch.int64
    for r, u in zip(raw.flatten(0, 1).flatten(1), unique.flatten(0, 1).flatten(1)):
        kept = u >= 0
        assert torch.equal(u[kept], r[kept])  # kept entries are untouched
        assert set(u[kept].tolist()) == set(r.tolist())  # every position named is still named
        # ... by its first window in raster order
        first = {}
        for k, p in enumerate(r.tolist()):
            first.setdefault(p, k)
        assert sorted(first.values()) == torch.nonzero(kept).flatten().tolist()


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_unpooling_scatters_each_position_once_as_a_loop_does(name):
    raw, level0 = stem_switches(name, seed=1)
    size = (level0.shape[-2], level0.shape[-1])
    # Values that differ between windows (a decoder's features, not the pooled maxima), so the
    # choice between two windows that share a position shows in the output.
    values = torch.randn(raw.shape, generator=torch.Generator().manual_seed(2))
    expected = reference_unpool(values.numpy(), raw.numpy(), size)
    got = max_unpool(values, raw, list(size))
    np.testing.assert_array_equal(got.numpy(), expected)
    # A plain scatter keeps another value where switches repeat (the last write on CPU, an
    # arbitrary one on CUDA): the reference is not what F.max_unpool2d gives.
    plain = F.max_unpool2d(values, raw, 2, output_size=size)
    assert not np.array_equal(plain.numpy(), expected)
    # Same positions filled, whichever value: both put something exactly where a switch points.
    assert torch.equal(plain != 0, got != 0)


def test_dropped_values_get_no_gradient_and_kept_ones_their_positions():
    raw, level0 = stem_switches("resnet18", seed=3)
    size = [level0.shape[-2], level0.shape[-1]]
    values = torch.randn(raw.shape, requires_grad=True)
    upstream = torch.randn(raw.shape[0], raw.shape[1], *size)
    (max_unpool(values, raw, size) * upstream).sum().backward()
    unique = unique_switches(raw, size[0] * size[1])
    kept = unique >= 0
    expected = torch.where(kept, upstream.flatten(2).gather(2, unique.clamp(min=0).flatten(2)).view_as(raw), 0.0)
    assert torch.equal(values.grad, expected)
    assert (~kept).any()


def test_small_example_by_hand():
    values = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # Windows 0, 1 and 3 share position 5 (row 1, col 1 of a 4x4 map); window 2 has position 8.
    switches = torch.tensor([[[[5, 5], [8, 5]]]])
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 1] = 1.0  # the first window's value, not 2.0 or 4.0
    expected[0, 0, 2, 0] = 3.0
    assert torch.equal(max_unpool(values, switches), expected)
    assert torch.equal(unique_switches(switches, 16), torch.tensor([[[[5, -1], [8, -1]]]]))


def test_non_overlapping_switches_are_unchanged_and_match_max_unpool2d():
    x = torch.randn(2, 3, 10, 14)
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(unique_switches(switches, 10 * 14), switches)
    torch.testing.assert_close(max_unpool(pooled, switches, [10, 14]), F.max_unpool2d(pooled, switches, 2, output_size=[10, 14]))


def test_out_of_range_switch_raises():
    with pytest.raises(RuntimeError):
        max_unpool(torch.ones(1, 1, 2, 2), torch.tensor([[[[0, 1], [2, 16]]]]), [4, 4])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script deprecation notice
def test_scripted_upsample_equals_eager():
    raw, level0 = stem_switches("resnet18", seed=4)
    up = Upsample("max_unpool", raw.shape[1], raw.shape[1])
    values = torch.randn(raw.shape)
    size = [level0.shape[-2], level0.shape[-1]]
    assert torch.equal(torch.jit.script(up)(values, raw, size), up(values, raw, size))


def test_resnet_unet_max_unpool_is_deterministic_under_deterministic_algorithms():
    """The model runs with torch.use_deterministic_algorithms(True) and gives the same output twice."""
    torch.manual_seed(5)
    model = segkit.create_model("unet", encoder="resnet18", num_classes=3, upsampling="max_unpool").eval()
    x = torch.randn(1, 3, 64, 64)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            a, b = model(x), model(x)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(a, b)


def test_onnx_export_keeps_the_rule_and_dynamic_sizes(tmp_path):
    """The unpooling exports to ONNX (F.max_unpool2d did not, with dynamic sizes) and onnxruntime
    keeps the first window's value where switches repeat, at sizes other than the traced one."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import warnings

    class PoolUnpool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled, switches = F.max_pool2d(x, 3, 2, 1, return_indices=True)
            # Values that differ between windows sharing a position: the rule shows in the output.
            rows = torch.arange(pooled.shape[-2], dtype=x.dtype).view(-1, 1) * 100
            cols = torch.arange(pooled.shape[-1], dtype=x.dtype).view(1, -1)
            return max_unpool(pooled + rows + cols, switches, [x.shape[-2], x.shape[-1]])

    path = tmp_path / "unpool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PoolUnpool(), (torch.randn(1, 2, 16, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.relu(torch.randn(3, 2, 24, 40))  # another batch and size; ReLU zeros: many shared maxima
    _, switches = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert planes_with_repeats(switches) > 0
    np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], PoolUnpool()(x).numpy())
