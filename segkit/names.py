"""The encoder and classifier names segkit registers, without importing torch.

``segkit list`` prints these so that it answers in a fraction of a second (importing the
backbones means importing torch, 2-3 s). ``tests/test_cli.py`` checks that they equal
:func:`segkit.list_encoders` / :func:`segkit.list_classifiers`, so a new registration that
is not added here fails the suite.
"""

ENCODER_NAMES = (
    "googlenet", "inception_v3", "plain18", "plain34", "resnet101", "resnet101_a", "resnet101_c",
    "resnet152", "resnet152_a", "resnet152_c", "resnet18", "resnet18_a", "resnet18_c", "resnet34",
    "resnet34_a", "resnet34_c", "resnet50", "resnet50_a", "resnet50_c", "vgg11", "vgg11_bn",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)

CLASSIFIER_NAMES = (
    "alexnet", "cifar_plain110", "cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56",
    "cifar_resnet110", "cifar_resnet1202", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
    "cifar_resnet56", "googlenet", "inception_v3", "lenet5", "plain18", "plain34", "resnet101",
    "resnet101_a", "resnet101_c", "resnet152", "resnet152_a", "resnet152_c", "resnet18",
    "resnet18_a", "resnet18_c", "resnet34", "resnet34_a", "resnet34_c", "resnet50", "resnet50_a",
    "resnet50_c", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)
