"""ConfusionMatrix against a hand-worked example, an independent numpy computation and torchmetrics;
label errors; top-k accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from segkit.metrics import ConfusionMatrix, TopKAccuracy, topk_accuracy

TARGET = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 1]])


def test_hand_computed_three_class_example():
    # (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (0,2) (2,2) (2,0); the 255 pixel is ignored.
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    r = cm.compute()
    assert r["confusion_matrix"] == [[1, 1, 1], [0, 2, 0], [1, 0, 1]]
    assert r["iou"] == pytest.approx([1 / 4, 2 / 3, 1 / 3])
    assert r["miou"] == pytest.approx((1 / 4 + 2 / 3 + 1 / 3) / 3)
    assert r["dice"] == pytest.approx([2 / 5, 4 / 5, 2 / 4])
    assert r["mdice"] == pytest.approx((0.4 + 0.8 + 0.5) / 3)
    assert r["accuracy"] == pytest.approx([1 / 3, 1.0, 1 / 2])
    assert r["mean_accuracy"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 7)
    assert r["fwiou"] == pytest.approx((3 * 1 / 4 + 2 * 2 / 3 + 2 * 1 / 3) / 7)
    assert r["per_image_miou"] == pytest.approx(r["miou"])
    assert all(isinstance(v, float) for k, v in r.items() if k not in ("iou", "dice", "accuracy", "confusion_matrix"))


def test_absent_class_is_nan_and_left_out_predicted_only_class_is_zero():
    cm = ConfusionMatrix(5)  # class 3 is predicted but not in the target, class 4 appears nowhere
    pred = PRED.clone()
    pred[0, 0] = 3
    cm.update(pred, TARGET)
    r = cm.compute()
    assert r["iou"][3] == 0.0 and math.isnan(r["iou"][4]) and math.isnan(r["dice"][4])
    assert math.isnan(r["accuracy"][3]) and math.isnan(r["accuracy"][4])
    assert r["miou"] == pytest.approx(np.nanmean(r["iou"])) and not math.isnan(r["miou"])
    assert r["miou"] == pytest.approx(sum(r["iou"][:4]) / 4)


def test_per_image_miou_follows_monai():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    # image 2: all class 0, half predicted as class 1: IoU_0 = 1/2; class 1 is absent from its ground
    # truth, so its false positives are left out of that image's mean (MONAI, ignore_empty=True).
    cm.update(torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), torch.zeros(2, 4, dtype=torch.long))
    cm.update(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 255))  # nothing counted: not scored
    assert cm.compute()["per_image_miou"] == pytest.approx(((1 / 4 + 2 / 3 + 1 / 3) / 3 + 1 / 2) / 2)


def numpy_metrics(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int, ignore: int) -> dict:
    """An independent computation: per-pixel loop, then the formulas in numpy."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    image_mious = []
    for pred, target in zip(preds, targets):
        for p_img, t_img in zip(pred, target):
            m = np.zeros_like(matrix)
            keep = t_img != ignore
            np.add.at(m, (t_img[keep], p_img[keep]), 1)
            matrix += m
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.diag(m) / (m.sum(0) + m.sum(1) - np.diag(m))
            iou[m.sum(1) == 0] = np.nan
            if m.sum():
                image_mious.append(np.nanmean(iou))
    tp, gt, pr = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt + pr - tp)
        dice = 2 * tp / (gt + pr)
        acc = tp / gt
    return {
        "confusion_matrix": matrix.tolist(),
        "iou": iou,
        "miou": np.nanmean(iou),
        "dice": dice,
        "mdice": np.nanmean(dice),
        "accuracy": acc,
        "mean_accuracy": np.nanmean(acc),
        "pixel_accuracy": tp.sum() / gt.sum(),
        "fwiou": np.nansum(gt / gt.sum() * iou),
        "per_image_miou": np.mean(image_mious),
    }


def assert_matches(result: dict, expected: dict) -> None:
    assert result["confusion_matrix"] == expected["confusion_matrix"]
    for key, value in expected.items():
        if key != "confusion_matrix":
            np.testing.assert_allclose(np.asarray(result[key], float), value, rtol=1e-10, err_msg=key)


@pytest.mark.parametrize("ignore", [255, -1, 0, None], ids=["void255", "negative", "inside", "none"])
def test_random_batches_against_numpy(ignore):
    """Class 4 never occurs in the target and class 5 nowhere; a negative ignore_index, or one
    inside [0, C), takes the general (masked) path."""
    rng = np.random.default_rng(0)
    num_classes = 6
    preds, targets = [], []
    cm = ConfusionMatrix(num_classes, ignore_index=ignore)
    for _ in range(3):
        target = rng.integers(0, 4, (2, 9, 11))
        pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 5, target.shape))
        if ignore is not None:
            target[rng.random(target.shape) < 0.2] = ignore
        preds.append(pred)
        targets.append(target)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8 if ignore == 255 else torch.int64))
    result = cm.compute()
    assert_matches(result, numpy_metrics(preds, targets, num_classes, ignore if ignore is not None else -12345))
    assert math.isnan(result["iou"][5]) and result["iou"][4] == 0.0


def test_against_torchmetrics_with_all_classes_present():
    gen = torch.Generator().manual_seed(1)
    num_classes = 4
    cm = ConfusionMatrix(num_classes)
    tm = {
        "confusion_matrix": MulticlassConfusionMatrix(num_classes, ignore_index=255),
        "iou": MulticlassJaccardIndex(num_classes, ignore_index=255, average=None),
        "miou": MulticlassJaccardIndex(num_classes, ignore_index=255, average="macro"),
        "dice": MulticlassF1Score(num_classes, ignore_index=255, average=None, multidim_average="global"),
        "accuracy": MulticlassAccuracy(num_classes, ignore_index=255, average=None),
        "mean_accuracy": MulticlassAccuracy(num_classes, ignore_index=255, average="macro"),
        "pixel_accuracy": MulticlassAccuracy(num_classes, ignore_index=255, average="micro"),
    }
    for _ in range(3):
        logits = torch.randn(2, num_classes, 10, 12, generator=gen)
        target = torch.randint(0, num_classes, (2, 10, 12), generator=gen)
        target[torch.rand(target.shape, generator=gen) < 0.1] = 255
        cm.update(logits, target)  # logits: argmax over the class axis
        for metric in tm.values():
            metric.update(logits, target)
    result = cm.compute()
    for key, metric in tm.items():
        np.testing.assert_allclose(np.asarray(result[key], float), metric.compute().double().numpy(), rtol=1e-6, err_msg=key)


def test_label_errors_name_the_value():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target label 7 is outside \[0, 3\) and is not ignore_index=255"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 255], [7, 1]]]))
    with pytest.raises(ValueError, match="target label -2"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 255], [-2, 1]]]))
    with pytest.raises(ValueError, match="prediction label 3 is outside"):
        cm.update(torch.tensor([[[0, 3], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, 3, H, W\)"):
        cm.update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))
    assert cm.matrix.sum() == 0  # nothing counted by the failed updates
    # an out-of-range prediction on an ignored pixel does not count and is no error
    cm.update(torch.tensor([[0, 9]]), torch.tensor([[0, 255]]))
    assert cm.matrix.sum() == 1
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_compute_twice_reset_and_update_after_compute():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    first = cm.compute()
    assert cm.compute() == first  # no double counting
    cm.update(PRED, TARGET)
    assert cm.compute()["confusion_matrix"] == [[2 * v for v in row] for row in first["confusion_matrix"]]
    cm.reset()
    empty = cm.compute()
    assert all(math.isnan(empty[k]) for k in ("miou", "pixel_accuracy", "fwiou", "per_image_miou"))
    cm.update(PRED[:1], TARGET[:1])  # a single (H, W) map
    assert cm.matrix.sum() == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 16, 16, generator=gen)
    target = torch.randint(0, 5, (2, 16, 16), generator=gen)
    target[:, :2] = 255
    cpu, gpu = ConfusionMatrix(5), ConfusionMatrix(5)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert gpu.compute() == cpu.compute()
    with pytest.raises(ValueError, match="target label 6"):
        gpu.update(logits.cuda(), torch.full((2, 16, 16), 6, device="cuda"))


def test_topk_accuracy_hand_worked():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: 5th highest -> top-5 hit only
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5: lowest -> miss
            [0.0, 0.0, 0.0, 0.1, 0.2, 0.3],  # label 4: 2nd highest -> top-5 hit
        ]
    )
    target = torch.tensor([1, 4, 5, 4])
    assert topk_accuracy(logits, target) == {"top1": 0.25, "top5": 0.75}
    assert topk_accuracy(logits[:, :3], torch.tensor([1, 0, 2, 2]), topk=(1, 5))["top5"] == 1.0  # k >= C
    acc = TopKAccuracy(topk=(1, 2, 5))
    acc.update(logits[:2], target[:2])
    acc.update(logits[2:], target[2:])
    assert acc.compute() == {"top1": 0.25, "top2": 0.5, "top5": 0.75}
    with pytest.raises(ValueError, match="label 6 is outside"):
        acc.update(logits, torch.tensor([1, 4, 6, 4]))


def test_input_dtypes_and_layouts_agree():
    gen = torch.Generator().manual_seed(4)
    target = torch.randint(0, 2, (3, 5, 6), generator=gen)
    pred = torch.randint(0, 2, (3, 5, 6), generator=gen)
    reference = ConfusionMatrix(2)
    reference.update(pred, target)
    variants = [
        (pred.bool(), target.bool()),
        (pred.to(torch.uint8), target.to(torch.int32)),
        (pred.transpose(1, 2).contiguous().transpose(1, 2), target.transpose(1, 2).contiguous().transpose(1, 2)),
        (pred[:, :, ::1], target.clone()),
    ]
    for p, t in variants:
        cm = ConfusionMatrix(2)
        cm.update(p, t)
        assert torch.equal(cm.matrix, reference.matrix)


def test_add_counts_equals_update():
    """Counts made elsewhere (evaluate's decoding threads) give what update() gives."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (3, 9, 11), generator=gen)
    target[0, :2] = 255
    pred = torch.randint(0, 4, (3, 9, 11), generator=gen)
    direct = ConfusionMatrix(4)
    direct.update(pred, target)
    fed = ConfusionMatrix(4)
    for p, t in zip(pred, target):
        one = ConfusionMatrix(4)
        one.update(p, t)
        result = one.compute()
        fed.add_counts(result["confusion_matrix"], [result["per_image_miou"]])
    got, want = fed.compute(), direct.compute()
    assert got["confusion_matrix"] == want["confusion_matrix"]
    for key in ("miou", "iou", "dice", "fwiou", "per_image_miou", "accuracy"):
        assert got[key] == pytest.approx(want[key], nan_ok=True), key
    with pytest.raises(ValueError, match="4x4"):
        fed.add_counts([[1, 2], [3, 4]])
