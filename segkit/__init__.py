"""segkit: semantic segmentation with classic backbones, FCN and U-Net decoders, honest metrics.

    import segkit
    encoder = segkit.create_encoder("resnet34", in_channels=1, weights="resnet34-b627a593.pth")
    features = encoder(x)          # list of (N, C_i, H / r_i, W / r_i), r = 2, 4, 8, 16, 32
    classifier = segkit.create_classifier("cifar_resnet56", num_classes=10)
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from segkit._lazy import lazy_exports
from segkit.errors import SegkitError

__all__ = ["SegkitError", "__version__", "create_classifier", "create_encoder", "create_model", "list_classifiers", "list_encoders"]

# The model factories import torch (2-3 s); `segkit --help`, `segkit list` and argument errors must
# answer without it, so they load on first use (PEP 562).
_LAZY = {"create_encoder": "segkit.encoders", "list_classifiers": "segkit.encoders", "list_encoders": "segkit.encoders",
         "create_classifier": "segkit.models", "create_model": "segkit.models"}

if TYPE_CHECKING:
    from segkit.encoders import create_encoder, list_classifiers, list_encoders
    from segkit.models import create_classifier, create_model


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
