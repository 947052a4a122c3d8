"""Pixel-wise segmentation losses (pure tensor code).

- :class:`DiceLoss`, :class:`JaccardLoss`, :class:`TverskyLoss`, :class:`FocalLoss`,
  :class:`LovaszLoss`: the keywords (``mode``, ``classes``, ``log_loss``, ``from_logits``,
  ``smooth``, ``ignore_index``, ``eps``, ``alpha``, ``beta``, ``gamma``, ``per_image``, ...) and the
  values of segmentation-models-pytorch's classes of the same names, so either can replace the other.
- :class:`CrossEntropyLoss` (class weights, ignore_index, label smoothing; torch's),
  :class:`BCEWithLogitsLoss` (pos_weight per channel, ignore_index).
- :func:`unet_weight_map` and :class:`WeightMapCrossEntropyLoss`: the U-Net paper's weighted loss.
- :class:`CombinedLoss` and :func:`build_loss`: weighted sums, from a config's loss section.

Every loss takes ``(prediction, target)`` with the prediction as logits ``(N, C, H, W)``.
"""

from segkit.losses._base import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE
from segkit.losses.combine import LOSSES, CombinedLoss, build_loss
from segkit.losses.cross_entropy import BCEWithLogitsLoss, CrossEntropyLoss, WeightMapCrossEntropyLoss
from segkit.losses.focal import FocalLoss
from segkit.losses.lovasz import LovaszLoss
from segkit.losses.region import DiceLoss, JaccardLoss, TverskyLoss
from segkit.losses.weight_map import unet_weight_map

__all__ = [
    "BINARY_MODE",
    "LOSSES",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "BCEWithLogitsLoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LovaszLoss",
    "TverskyLoss",
    "WeightMapCrossEntropyLoss",
    "build_loss",
    "unet_weight_map",
]
