"""Losses and metrics at their edges: half-precision Lovasz gradients, batches with nothing to
count, 16-bit label tensors, class-probability targets, and bad arguments named in the error.
Oracles: float32 computations, torch's cross-entropy, and hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segkit.losses import BCEWithLogitsLoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, LovaszLoss, TverskyLoss
from segkit.losses.focal import focal_terms
from segkit.metrics import ConfusionMatrix


def _grad(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_()
    loss(logits, target).backward()
    return logits.grad.float()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])  # the gradients are rounded to the dtype
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_lovasz_gradients_of_half_precision_logits_match_float32(mode, dtype, tolerance):
    """The running counts of lovasz_grad stop growing in half precision (2048 in float16, 256 in
    bfloat16): the gradients were wrong by 1.7-7x their size; now within the logits' rounding."""
    g = torch.Generator().manual_seed(0)
    channels = 1 if mode == "binary" else 3
    logits = 2 * torch.randn(4, channels, 64, 64, generator=g)
    target = torch.randint(0, 2 if mode == "binary" else 3, (4, 64, 64), generator=g)
    loss = LovaszLoss(mode)
    exact = _grad(loss, logits.to(dtype).float(), target)  # the same rounded inputs, in float32
    half = _grad(loss, logits.to(dtype), target)
    assert ((half - exact).norm() / exact.norm()).item() < tolerance


@pytest.mark.parametrize("loss", [
    CrossEntropyLoss(), CrossEntropyLoss(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1),
    BCEWithLogitsLoss(ignore_index=255), FocalLoss("binary", ignore_index=255), FocalLoss("multiclass", ignore_index=255),
    FocalLoss("multilabel", ignore_index=255), DiceLoss("multiclass", ignore_index=255), LovaszLoss("multiclass", ignore_index=255),
], ids=["ce", "ce weighted smoothed", "bce", "focal binary", "focal multiclass", "focal multilabel", "dice", "lovasz"])
def test_a_batch_with_every_pixel_ignored_gives_zero_and_finite_gradients(loss):
    """Sparse annotations and random crops make such batches; torch's 0/0 NaN spoils every weight of
    a run without mixed precision (segkit's losses, like MMSegmentation's, give 0)."""
    binary = isinstance(loss, BCEWithLogitsLoss) or getattr(loss, "mode", None) == "binary"
    multilabel = getattr(loss, "mode", None) == "multilabel"
    logits = torch.randn(2, 1 if binary else 3, 4, 5, requires_grad=True)
    target = torch.full((2, 3, 4, 5) if multilabel else (2, 4, 5), 255)
    value = loss(logits, target)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_cross_entropy_equals_torchs_wherever_a_pixel_counts():
    g = torch.Generator().manual_seed(1)
    for weights, smoothing, ignore in [(None, 0.0, 255), ([0.5, 2.0, 1.0], 0.1, 255), ([0.5, 2.0, 1.0], 0.0, 1), (None, 0.2, -100)]:
        logits = torch.randn(2, 3, 5, 7, generator=g, requires_grad=True)
        target = torch.randint(0, 3, (2, 5, 7), generator=g)
        target[0, :2] = ignore
        ours = CrossEntropyLoss(class_weights=weights, ignore_index=ignore, label_smoothing=smoothing)(logits, target)
        theirs = F.cross_entropy(logits, target, weight=None if weights is None else torch.tensor(weights),
                                 ignore_index=ignore, label_smoothing=smoothing)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0])
    probabilities = torch.softmax(torch.randn(2, 3, 5, 7, generator=g), 1)  # torch's class-probability targets
    torch.testing.assert_close(CrossEntropyLoss()(logits, probabilities), F.cross_entropy(logits, probabilities))


def test_multilabel_focal_leaves_a_wholly_ignored_channel_out_of_the_class_mean():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 3, 4, 4), generator=g)
    target[:, 1] = 255
    value = FocalLoss("multilabel", ignore_index=255)(logits, target)
    hand = torch.stack([focal_terms(logits[:, c], target[:, c])[0].mean() for c in (0, 2)]).mean()
    torch.testing.assert_close(value, hand)
    weighted = FocalLoss("multilabel", ignore_index=255, class_weights=[1.0, 5.0, 3.0])(logits, target)
    per_class = [focal_terms(logits[:, c], target[:, c])[0].mean() for c in (0, 2)]
    torch.testing.assert_close(weighted, (per_class[0] + 3 * per_class[1]) / 4)


@pytest.mark.parametrize("loss", [DiceLoss("multiclass"), JaccardLoss("multiclass"), TverskyLoss("multiclass"),
                                  FocalLoss("multiclass"), LovaszLoss("multiclass"), CrossEntropyLoss()],
                         ids=lambda loss: type(loss).__name__)
def test_16_bit_label_tensors_give_the_int64_result(loss):
    """``torch.from_numpy`` of a 16-bit mask is uint16, which most torch operations refuse."""
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(2, 3, 6, 5, generator=g), torch.randint(0, 3, (2, 6, 5), generator=g)
    torch.testing.assert_close(loss(logits, target.to(torch.uint16)), loss(logits, target))


def test_confusion_matrix_takes_16_bit_labels_and_refuses_flat_input():
    target = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(4))
    pred = torch.roll(target, 1, dims=2)
    wide, plain = ConfusionMatrix(3), ConfusionMatrix(3)
    wide.update(pred.to(torch.uint16), target.to(torch.uint16))
    plain.update(pred, target)
    assert wide.compute()["confusion_matrix"] == plain.compute()["confusion_matrix"]
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(H, W\)"):
        ConfusionMatrix(2).update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("make,match", [
    (lambda x: CrossEntropyLoss(class_weights=[1.0, 2.0])(x, torch.zeros(2, 4, 4, dtype=torch.long)), "class_weights has 2 entries for 3 classes"),
    (lambda x: BCEWithLogitsLoss(pos_weight=[1.0, 2.0])(x, torch.zeros(2, 3, 4, 4)), "pos_weight has 2 entries for 3 channels"),
    (lambda x: DiceLoss("multiclass", classes=[5])(x, torch.zeros(2, 4, 4, dtype=torch.long)), r"classes \[5\] must be channels 0..2"),
    (lambda x: FocalLoss("multiclass", ignore_index=255, class_weights=[1.0])(x, torch.zeros(2, 4, 4, dtype=torch.long)), "class_weights has 1 entries for 3"),
])
def test_arguments_that_do_not_fit_the_prediction_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make(torch.randn(2, 3, 4, 4))
