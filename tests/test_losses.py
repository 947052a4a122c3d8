"""Losses: every smp-compatible loss against segmentation-models-pytorch (the oracle), the
cross-entropies against torch, gradients, and the weighted sums built from a config."""

from __future__ import annotations

import itertools

import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F

from segkit import SegkitError
from segkit.losses import (
    LOSSES,
    BCEWithLogitsLoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszLoss,
    TverskyLoss,
    build_loss,
)

N, C, H, W = 2, 3, 6, 7
MODES = ["binary", "multiclass", "multilabel"]


def make_batch(mode: str, ignore: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets for ``mode``; multiclass targets leave class 2 out (an absent class)."""
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else C
    logits = 2 * torch.randn(N, channels, H, W, generator=g)
    if mode == "binary":
        target = torch.randint(0, 2, (N, H, W), generator=g)
    elif mode == "multiclass":
        target = torch.randint(0, 2, (N, H, W), generator=g)
    else:
        target = torch.randint(0, 2, (N, C, H, W), generator=g)
    if ignore is not None:
        target[torch.rand(target.shape, generator=g) < 0.25] = ignore
    return logits, target


def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    return logits.softmax(1) if mode == "multiclass" else logits.sigmoid()


def assert_same(ours: torch.nn.Module, theirs: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> None:
    expected = theirs(pred, target)
    got = ours(pred, target)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


REGION = [(DiceLoss, smp_losses.DiceLoss), (JaccardLoss, smp_losses.JaccardLoss), (TverskyLoss, smp_losses.TverskyLoss)]


@pytest.mark.parametrize("ours,theirs", REGION, ids=["dice", "jaccard", "tversky"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("smooth,log_loss,from_logits", list(itertools.product([0.0, 1.0], [False, True], [True, False])))
def test_region_losses_match_smp(ours, theirs, mode, ignore, smooth, log_loss, from_logits):
    logits, target = make_batch(mode, ignore)
    pred = logits if from_logits else probabilities(logits, mode)
    kwargs = dict(mode=mode, smooth=smooth, log_loss=log_loss, from_logits=from_logits, ignore_index=ignore)
    assert_same(ours(**kwargs), theirs(**kwargs), pred, target)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize(
    "options",
    [
        dict(alpha=0.3, beta=0.7, gamma=2.0),
        dict(alpha=0.7, beta=0.3, gamma=1.0, classes=[0, 2], smooth=0.5),
        dict(class_weights=[1.0, 2.0, 0.5], gamma=0.75),
        dict(class_weights=[1.0, 2.0, 0.5], classes=[1, 2], log_loss=True, ignore_index=255),
    ],
)
def test_tversky_options_match_smp(mode, options):
    logits, target = make_batch(mode, options.get("ignore_index"))
    assert_same(TverskyLoss(mode, **options), smp_losses.TverskyLoss(mode, **options), logits, target)


@pytest.mark.parametrize("ours,theirs", REGION[:2], ids=["dice", "jaccard"])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_region_classes_and_class_weights_match_smp(ours, theirs, mode):
    logits, target = make_batch(mode, 255)
    for options in (dict(classes=[0, 2]), dict(class_weights=[0.2, 1.0, 3.0]), dict(classes=[2, 1], class_weights=[0.2, 1.0, 3.0])):
        assert_same(ours(mode, ignore_index=255, **options), theirs(mode, ignore_index=255, **options), logits, target)


def test_region_loss_of_soft_targets_matches_smp():
    """Soft (non 0/1) multilabel targets: the L1 ("semimetric") form of the intersection."""
    logits, _ = make_batch("multilabel", None)
    soft = torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(3))
    assert_same(DiceLoss("multilabel"), smp_losses.DiceLoss("multilabel"), logits, soft)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(alpha=0.25, gamma=1.5),
        dict(reduction="sum"),
        dict(reduction="batchwise_mean"),
        dict(normalized=True),
        dict(reduced_threshold=0.5, reduction="sum"),
        dict(from_logits=False),
    ],
    ids=["default", "alpha", "sum", "batchwise_mean", "normalized", "reduced", "probabilities"],
)
def test_focal_matches_smp(mode, ignore, options):
    logits, target = make_batch(mode, ignore)
    pred = logits if options.get("from_logits", True) else probabilities(logits, mode)
    ours = FocalLoss(mode, ignore_index=ignore, **options)
    if mode == "multilabel" and ignore is not None:
        # smp's multilabel FocalLoss cannot index a per-channel ignore mask; the oracle is its
        # binary loss on each channel, averaged over channels (which is what segkit does).
        theirs = smp_losses.FocalLoss("binary", ignore_index=ignore, **options)
        expected = torch.stack([theirs(pred[:, c : c + 1], target[:, c]) for c in range(C)]).mean()
        torch.testing.assert_close(ours(pred, target), expected, rtol=1e-5, atol=1e-6)
    else:
        assert_same(ours, smp_losses.FocalLoss(mode, ignore_index=ignore, **options), pred, target)


def test_focal_class_weights_match_smp():
    logits, target = make_batch("multiclass", 255)
    options = dict(alpha=0.25, ignore_index=255, class_weights=[1.0, 3.0, 0.5])
    assert_same(FocalLoss("multiclass", **options), smp_losses.FocalLoss("multiclass", **options), logits, target)


def test_focal_reduction_none_is_per_element():
    logits, target = make_batch("multiclass", 255)
    per_element = FocalLoss("multiclass", ignore_index=255, reduction="none")(logits, target)
    assert per_element.shape == logits.shape
    assert (per_element.permute(1, 0, 2, 3)[:, target == 255] == 0).all()
    summed = FocalLoss("multiclass", ignore_index=255, reduction="sum")(logits, target)
    torch.testing.assert_close(per_element.sum() / C, summed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_smp(mode, ignore, per_image):
    logits, target = make_batch(mode, ignore)
    kwargs = dict(mode=mode, per_image=per_image, ignore_index=ignore)
    assert_same(LovaszLoss(**kwargs), smp_losses.LovaszLoss(**kwargs), logits, target)
    # from_logits is accepted and ignored, as in smp.
    torch.testing.assert_close(LovaszLoss(from_logits=False, **kwargs)(logits, target), LovaszLoss(**kwargs)(logits, target))


def test_lovasz_all_ignored_image_contributes_zero():
    logits, target = make_batch("multiclass", None)
    target[0] = 255
    loss = LovaszLoss("multiclass", per_image=True, ignore_index=255)(logits, target)
    alone = LovaszLoss("multiclass", ignore_index=255)(logits[1:], target[1:])
    torch.testing.assert_close(loss, alone / 2)


ALL_LOSSES = [
    lambda mode: DiceLoss(mode, ignore_index=255),
    lambda mode: JaccardLoss(mode, ignore_index=255, log_loss=True),
    lambda mode: TverskyLoss(mode, ignore_index=255, gamma=2.0),
    lambda mode: FocalLoss(mode, ignore_index=255, alpha=0.25),
    lambda mode: LovaszLoss(mode, ignore_index=255),
    lambda mode: LovaszLoss(mode, ignore_index=255, per_image=True),
]


@pytest.mark.parametrize("factory", ALL_LOSSES, ids=["dice", "jaccard", "tversky", "focal", "lovasz", "lovasz_per_image"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_flow(factory, mode):
    logits, target = make_batch(mode, 255)
    logits.requires_grad_(True)
    loss = factory(mode)(logits, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # ignored pixels get no gradient
    ignored = (target == 255) if mode == "multilabel" else (target == 255).unsqueeze(1).expand_as(logits)
    assert (logits.grad[ignored] == 0).all()


def test_region_loss_shape_and_mode_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        DiceLoss("multi")
    with pytest.raises(ValueError, match="not supported with mode='binary'"):
        DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="multiclass"):
        DiceLoss("multiclass")(torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        DiceLoss("multiclass")(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255))
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        DiceLoss("multiclass", class_weights=[1.0, 2.0])(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_cross_entropy_is_torchs_with_class_weights_ignore_and_smoothing():
    logits, target = make_batch("multiclass", 255)
    target = target.to(torch.uint8)  # masks often arrive as uint8
    ours = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1)(logits, target)
    expected = F.cross_entropy(logits, target.long(), weight=torch.tensor([1.0, 2.0, 3.0]), ignore_index=255, label_smoothing=0.1)
    torch.testing.assert_close(ours, expected)


def test_bce_pos_weight_per_channel_and_ignore_index():
    logits, target = make_batch("multilabel", 255)
    pos_weight = [1.0, 2.0, 4.0]
    loss = BCEWithLogitsLoss(pos_weight=pos_weight, ignore_index=255)(logits, target)
    valid = target != 255
    expected = torch.stack(
        [
            F.binary_cross_entropy_with_logits(
                logits[:, c][valid[:, c]], target[:, c][valid[:, c]].float(), pos_weight=torch.tensor(pos_weight[c]), reduction="sum"
            )
            for c in range(C)
        ]
    ).sum() / valid.sum()
    torch.testing.assert_close(loss, expected)
    # binary: (N, H, W) targets for (N, 1, H, W) logits, same as torch without ignore
    logits, target = make_batch("binary", None)
    torch.testing.assert_close(
        BCEWithLogitsLoss(pos_weight=3.0)(logits, target),
        F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).float(), pos_weight=torch.tensor([3.0])),
    )


def test_combined_loss_is_the_weighted_sum():
    logits, target = make_batch("multiclass", 255)
    ce, dice = CrossEntropyLoss(), DiceLoss("multiclass", ignore_index=255)
    combined = CombinedLoss([(ce, 1.0), (dice, 0.5)], names=["ce", "dice"])
    torch.testing.assert_close(combined(logits, target), ce(logits, target) + 0.5 * dice(logits, target))
    assert set(combined.last_terms) == {"ce", "dice"}
    torch.testing.assert_close(combined.last_terms["dice"], dice(logits, target))


def test_build_loss_from_config():
    logits, target = make_batch("multiclass", 255)
    loss = build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 2.0, "mode": "multiclass", "ignore_index": 255}])
    expected = CrossEntropyLoss()(logits, target) + 2 * DiceLoss("multiclass", ignore_index=255)(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    torch.testing.assert_close(build_loss("ce")(logits, target), CrossEntropyLoss()(logits, target))
    single = build_loss({"name": "focal", "mode": "multiclass", "class_weights": [1, 2, 3]})
    assert isinstance(single.losses[0], FocalLoss)
    # every registered name builds (with mode where the loss needs one)
    for name, cls in LOSSES.items():
        entry = {"name": name, "mode": "multiclass"} if "mode" in cls.__init__.__code__.co_varnames else {"name": name}
        build_loss([entry])


@pytest.mark.parametrize(
    "spec,message",
    [
        ([{"name": "ce"}, {"name": "dise"}], r"loss\[1\]: unknown loss name 'dise'; use one of ce, bce, dice"),
        ([{"name": "dice", "mode": "multiclass", "smoth": 1.0}], r"loss\[0\]: loss 'dice' has no option 'smoth'; its options are mode, classes"),
        ([{"name": "dice"}], r"loss\[0\]: loss 'dice' needs the option 'mode' \(binary, multiclass or multilabel\)"),
        ([{"name": "dice", "mode": "multi"}], r"loss\[0\]: loss 'dice': mode must be one of binary, multiclass, multilabel"),
        ({"name": "ce", "weight": -1}, r"loss.weight must be a non-negative number"),
        ([{"weight": 1.0}], r"loss\[0\] must be a loss name or a mapping with a 'name' key"),
        ([], r"loss must be a loss name"),
    ],
)
def test_build_loss_errors_name_the_entry(spec, message):
    with pytest.raises(SegkitError, match=message):
        build_loss(spec)


@pytest.mark.parametrize("case", ["all_ignored", "absent_class", "empty_tile"])
def test_focal_tversky_below_gamma_one_keeps_finite_gradients_where_nothing_is_scored(case):
    """(1 - TI)**0.75 at a loss of 0: the slope is infinite and the gradient was NaN (training stopped at step 1)."""
    from segkit.losses import TverskyLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    options = {"alpha": 0.3, "beta": 0.7, "gamma": 0.75}
    if case == "all_ignored":
        target[:] = 255
        loss_fn = TverskyLoss("multiclass", ignore_index=255, **options)
    elif case == "absent_class":
        loss_fn = TverskyLoss("multiclass", classes=[1], **options)  # class 1 is in no target
    else:
        logits = torch.randn(2, 1, 8, 8, requires_grad=True)
        loss_fn = TverskyLoss("binary", **options)
    loss = loss_fn(logits, target if case != "empty_tile" else target.float())
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(logits.grad).all()
    scored = TverskyLoss("multiclass", **options)(logits.detach().requires_grad_() if case != "empty_tile" else torch.randn(2, 3, 8, 8),
                                                  torch.randint(0, 3, (2, 8, 8)))
    assert 0 < float(scored) < 1
