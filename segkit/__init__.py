"""segkit: semantic segmentation with classic backbones, FCN and U-Net decoders, honest metrics.

    import segkit
    encoder = segkit.create_encoder("resnet34", in_channels=1, weights="resnet34-b627a593.pth")
    features = encoder(x)          # list of (N, C_i, H / r_i, W / r_i), r = 2, 4, 8, 16, 32
    classifier = segkit.create_classifier("cifar_resnet56", num_classes=10)
"""

__version__ = "0.1.0"

from segkit.encoders import create_encoder, list_classifiers, list_encoders  # noqa: E402
from segkit.errors import SegkitError  # noqa: E402
from segkit.models import create_classifier, create_model  # noqa: E402

__all__ = ["SegkitError", "__version__", "create_classifier", "create_encoder", "create_model", "list_classifiers", "list_encoders"]
