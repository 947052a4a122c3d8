"""Classifier training with the engine (task: classification): metrics, ten-crop, auxiliary heads, freezing, runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from segkit import SegkitError, create_classifier
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.data import ClassificationTransform, ImageFolderDataset, ten_crop
from segkit.engine.builders import build_datasets, build_loss_fn, build_model_from_config
from segkit.engine.classify import predict_ten_crop, validate_classification
from segkit.engine.distributed import DistInfo
from segkit.engine.optim import build_optimizer
from segkit.engine.tasks import make_task
from segkit.engine.train import train

CPU = torch.device("cpu")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def tiny_config(root: Path, **trainer) -> dict:
    return {
        "task": "classification",
        "model": {"arch": "cifar_resnet20", "num_classes": 10},
        "data": {"kind": "synthetic", "root": str(root), "val_split": "test", "synthetic": {"n": 120, "size": 16, "seed": 0}},
        "optimizer": {"name": "adam", "lr": 0.003},
        "schedule": {"name": "constant"},
        "trainer": {"epochs": 3, "batch_size": 20, "seed": 0, "log_interval": 1, "device": "cpu", **trainer},
        "output": {"plots": False},
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from segkit.data import make_synthetic_cifar

    return make_synthetic_cifar(tmp_path_factory.mktemp("synthetic"), n=120, size=16, seed=0)


def image_folder(root: Path, classes=("ants", "bees", "wasps"), per_class=2, size=(40, 48), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                shape = (*size, 3) if mode == "RGB" else size
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / name / f"{i}.png")
    return root


# -- metrics ---------------------------------------------------------------------------------

class _Indexed(torch.utils.data.Dataset):
    """Item i is (tensor [i], label i); the "model" below looks its logits up by that index."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return torch.tensor([float(index)]), torch.tensor(self.labels[index])


class _Lookup(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def test_top1_top5_error_and_per_class_accuracy_hand_worked():
    ramp = torch.arange(7.0)  # classes ranked 6, 5, 4, 3, 2 in the top five
    logits = torch.stack([torch.tensor([0, 0, 9, 0, 0, 0, 0.0]), ramp, ramp, ramp])
    labels = [2, 0, 3, 6]  # top-1 hit; miss; top-5 hit only (4th); top-1 hit
    cfg = config_from_dict({"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 7}, "trainer": {"batch_size": 3}})
    metrics = validate_classification(_Lookup(logits), _Indexed(labels), cfg, CPU, DistInfo())
    assert metrics["top1"] == 0.5 and metrics["top1_error"] == 0.5
    assert metrics["top5"] == 0.75 and metrics["top5_error"] == 0.25
    per_class = metrics["per_class_accuracy"]
    assert [per_class[c] for c in (0, 2, 3, 6)] == [0.0, 1.0, 0.0, 1.0]
    assert all(np.isnan(per_class[c]) for c in (1, 4, 5))  # no sample of the class
    assert metrics["mean_class_accuracy"] == 0.5
    # With 5 classes or fewer top-5 says nothing: only top-1 is reported.
    small = config_from_dict({"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 3}})
    assert "top5" not in validate_classification(_Lookup(logits[:, :3]), _Indexed([2, 0, 1, 2]), small, CPU, DistInfo())


# -- ten-crop --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [20, (18, 25)])
def test_ten_crop_matches_torchvision(size):
    images = torch.randn(2, 3, 37, 41)
    crops = ten_crop(images, size)
    h, w = (size, size) if isinstance(size, int) else size
    assert crops.shape == (2, 10, 3, h, w)
    for n in range(2):
        expected = torch.stack(TF.ten_crop(images[n], [h, w]))
        assert torch.equal(crops[n], expected)
    with pytest.raises(SegkitError, match="does not fit"):
        ten_crop(images, 40)


def test_ten_crop_prediction_averages_the_softmax_of_the_crops():
    torch.manual_seed(0)
    model = create_classifier("cifar_resnet20").eval()
    images = torch.randn(3, 3, 40, 44)
    with torch.no_grad():
        got = predict_ten_crop(model, images, 32)
        expected = torch.stack([model(torch.stack(TF.ten_crop(image, [32, 32]))).softmax(1).mean(0) for image in images])
    assert got.shape == (3, 10)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(3))


def test_ten_crop_validation_of_an_image_folder_against_torchvision(tmp_path):
    root = image_folder(tmp_path / "folder", per_class=3)
    cfg = config_from_dict({"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 3},
                            "data": {"kind": "imagefolder", "root": str(root), "crop_size": 24, "resize_size": 32},
                            "trainer": {"eval_crops": "ten_crop", "batch_size": 4}})
    train_set, val_set = build_datasets(cfg)
    assert train_set.classes == ["ants", "bees", "wasps"] and val_set[0][0].shape == (10, 3, 24, 24)
    assert train_set[(0, 7)][0].shape == (3, 24, 24)  # random-resized crop to crop_size in training
    torch.manual_seed(0)
    model = build_model_from_config(cfg).eval()
    metrics = validate_classification(model, val_set, cfg, CPU, DistInfo())
    hits, per_class = [], {0: [], 1: [], 2: []}
    with torch.no_grad():
        for path, label in val_set.folder.samples:
            image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
            image = TF.resize(image, [32], antialias=True)
            crops = (torch.stack(TF.ten_crop(image, [24, 24])).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
            pred = int(model(crops).softmax(1).mean(0).argmax())
            hits.append(pred == label)
            per_class[label].append(pred == label)
    assert metrics["top1"] == pytest.approx(np.mean(hits))
    assert metrics["per_class_accuracy"] == pytest.approx([np.mean(per_class[c]) for c in range(3)])


# -- auxiliary heads ---------------------------------------------------------------------------

def test_googlenet_auxiliary_losses_weigh_in_with_aux_weight_and_leave_at_evaluation():
    cfg = config_from_dict({"task": "classification", "model": {"arch": "googlenet", "num_classes": 5}})
    torch.manual_seed(0)
    model = build_model_from_config(cfg).train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 4])
    output = model(x)
    assert isinstance(output, tuple) and len(output) == 3
    loss, logits = make_task(cfg).loss(build_loss_fn(cfg), output, y)
    main_ce, aux1, aux2 = (F.cross_entropy(o, y) for o in output)
    assert torch.allclose(loss, main_ce + 0.3 * (aux1 + aux2)) and logits is output[0]
    assert not torch.allclose(loss, main_ce)
    half = config_from_dict({"task": "classification", "model": {"arch": "googlenet", "num_classes": 5}, "trainer": {"aux_weight": 0.5}})
    assert torch.allclose(make_task(half).loss(build_loss_fn(half), output, y)[0], main_ce + 0.5 * (aux1 + aux2))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 5)  # evaluation: the main logits only


def test_classification_cross_entropy_ignores_no_label():
    cfg = config_from_dict({"task": "classification", "model": {"arch": "resnet18", "num_classes": 1000}})
    logits, labels = torch.randn(3, 1000), torch.tensor([255, 3, 999])  # 255 is a real ImageNet class
    assert torch.allclose(build_loss_fn(cfg)(logits, labels), F.cross_entropy(logits, labels))


def test_googlenet_trains_through_the_engine(tmp_path, synthetic):
    cfg = config_from_dict(tiny_config(synthetic, epochs=1, batch_size=25), ["model.arch=googlenet", "trainer.eval_crops=ten_crop",
                                                                       "data.crop_size=16", "data.resize_size=20"])  # ten distinct 16x16 crops
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 4 and result.score_key == "top1" and 0 <= result.best_score <= 1
    # Trained from scratch without the input transform: the file gives back that model (it was switched on).
    reloaded = create_classifier("googlenet", num_classes=10, weights=tmp_path / "run" / "best.pt")
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["transform_input"] is False
    assert reloaded.transform_input is False


@pytest.mark.parametrize(("entries", "expected"), [
    ({}, True),  # a plain state dict (torchvision's files): their weights expect the transform
    ({"transform_input": False}, False), ({"transform_input": True}, True),  # segkit checkpoints say it
    ({"config": {"model": {"encoder_weights": None, "weights": None}}}, False),  # older ones: from scratch
    ({"config": {"model": {"encoder_weights": "googlenet-1378be20.pth"}}}, True),  # older ones: from weights
])
def test_a_reloaded_googlenet_keeps_the_input_transform_it_was_trained_with(tmp_path, entries, expected):
    state = create_classifier("googlenet", num_classes=4).state_dict()
    torch.save({"model": state, **entries} if entries else state, tmp_path / "w.pt")
    assert create_classifier("googlenet", num_classes=4, weights=tmp_path / "w.pt").transform_input is expected
    assert create_classifier("googlenet", num_classes=4, weights=tmp_path / "w.pt", transform_input=not expected).transform_input is not expected


# -- transfer learning ------------------------------------------------------------------------

def test_frozen_backbone_stays_bit_equal_while_the_head_trains(tmp_path, synthetic):
    torch.manual_seed(5)
    start = create_classifier("cifar_resnet20").state_dict()
    torch.save(start, tmp_path / "start.pt")
    cfg = config_from_dict(tiny_config(synthetic, epochs=2), [f"model.encoder_weights={tmp_path / 'start.pt'}", "model.freeze_encoder=true"])
    train(cfg, tmp_path / "run", progress=False)
    end = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for key, value in start.items():
        if key.startswith("fc."):
            assert not torch.equal(end[key], value), key
        else:  # convolutions, BatchNorm scales and running statistics alike
            assert torch.equal(end[key], value), key


def test_encoder_lr_mult_gives_the_backbone_of_a_classifier_its_own_learning_rate():
    cfg = config_from_dict({"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 10, "encoder_lr_mult": 0.1},
                            "optimizer": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}})
    model = build_model_from_config(cfg)
    optimizer = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    head = {names[id(p)] for g in ("model", "model_no_decay") for p in groups[g]["params"]}
    assert head == {"fc.weight", "fc.bias"}
    assert groups["encoder"]["lr"] == pytest.approx(0.01) and groups["model"]["lr"] == pytest.approx(0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert torch.allclose(before["conv1.weight"] - model.conv1.weight, torch.full_like(model.conv1.weight, 0.01))
    assert torch.allclose(before["fc.weight"] - model.fc.weight, torch.full_like(model.fc.weight, 0.1))
    # GoogLeNet's head: the main and both auxiliary output layers (the layers sized by the class count).
    g = config_from_dict({"task": "classification", "model": {"arch": "googlenet", "num_classes": 5, "freeze_encoder": True}})
    net = build_model_from_config(g)
    trained = {n for n, p in net.named_parameters() if id(p) in {id(q) for grp in build_optimizer(net, g).param_groups for q in grp["params"]}}
    assert trained == {f"{h}.{t}" for h in ("fc", "aux1.fc2", "aux2.fc2") for t in ("weight", "bias")}


# -- training runs -----------------------------------------------------------------------------

def test_segkit_train_on_a_classification_config_learns_and_keeps_the_best_top1(tmp_path, synthetic, capsys):
    import yaml

    config = tmp_path / "cls.yaml"
    config.write_text(yaml.safe_dump(tiny_config(synthetic, epochs=4) | {"output": {"plots": True}}))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "best top-1 accuracy" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all(0 <= r["train_top1_error"] <= 1 and r["val_top1_error"] == pytest.approx(1 - r["val_top1"]) for r in epochs)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    top1 = [r["val_top1"] for r in epochs]
    assert best["score_key"] == "top1" and best["best_score"] == max(top1) and best["metrics"]["top1"] == max(top1)
    assert best["epoch"] == 1 + top1.index(max(top1))
    assert (tmp_path / "run" / "curves.png").is_file()


def test_classification_resume_is_bit_identical(tmp_path, synthetic):
    cfg = config_from_dict(tiny_config(synthetic, epochs=2))
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", max_steps=3, progress=False)  # stops inside the first epoch (6 steps each)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_torchrun_two_processes_count_every_validation_image_once(tmp_path, synthetic):
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    repo = Path(__file__).resolve().parents[1]
    config = tmp_path / "c.yaml"
    # Validation one image at a time, one thread, in both runs: the logits of an image then do not depend on
    # which images share its batch or on the thread count, so the two runs must agree exactly.
    OmegaConf.save(OmegaConf.create(tiny_config(synthetic, epochs=1, batch_size=10, val_batch_size=1)), config)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(repo / "scripts" / "train.py"),
         str(config), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 5  # 100 training images / 2 ranks / batch 10
    cfg = config_from_dict(tiny_config(synthetic, val_batch_size=1))
    model = build_model_from_config(cfg)
    model.load_state_dict(state["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = validate_classification(model, build_datasets(cfg)[1], cfg, CPU, DistInfo())
    finally:
        torch.set_num_threads(threads)
    assert state["metrics"]["top1"] == single["top1"] and state["metrics"]["top5"] == single["top5"]
    no_nan = [None if v != v else v for v in single["per_class_accuracy"]]  # the checkpoint stores NaN as None
    assert state["metrics"]["per_class_accuracy"] == no_nan


# -- data and config errors --------------------------------------------------------------------

def test_image_folder_reads_classes_grey_and_bad_files(tmp_path):
    root = image_folder(tmp_path / "grey", classes=("b", "a"), mode="L")
    grey = ImageFolderDataset(root, "train", in_channels=1)
    assert grey.classes == ["a", "b"] and grey[0][0].shape == (1, 40, 48) and grey.targets == [0, 0, 1, 1]
    rgb = ImageFolderDataset(root, "train", in_channels=3)  # grey files read as RGB
    assert rgb[0][0].shape == (3, 40, 48)
    (root / "train" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(SegkitError, match=r"0.png cannot be read"):
        grey[0]
    with pytest.raises(SegkitError, match="does not exist"):
        ImageFolderDataset(root, "test")
    with pytest.raises(SegkitError, match="differ from the training split"):
        ImageFolderDataset(root, "val", classes=["a", "b", "c"])
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(SegkitError, match="one sub-folder per class"):
        ImageFolderDataset(tmp_path / "empty", "train")


def test_random_resized_crop_size_and_seed():
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    transform = ClassificationTransform(True, "random_resized_crop", 32)
    a, b = transform(image, torch.Generator().manual_seed(1)), transform(image, torch.Generator().manual_seed(1))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, transform(image, torch.Generator().manual_seed(2)))
    with pytest.raises(SegkitError, match="data.crop_size"):
        ClassificationTransform(True, "random_resized_crop", None)
    # "none": training sees the evaluation's resize and centre crop (then the flip, if asked)
    plain = ClassificationTransform(True, "none", 32, resize_size=40, hflip=False)(image, torch.Generator().manual_seed(0))
    expected = TF.center_crop(TF.resize(image, [40], antialias=True), [32, 32]).float() / 255
    assert torch.allclose(plain, expected, atol=1.01 / 255)  # torchvision's v1 and v2 uint8 resizes round apart
    assert torch.equal(plain, ClassificationTransform(False, size=32, resize_size=40)(image))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.kind=folder"], "is for task: segmentation"),
        (["loss=[{name: dice, mode: multiclass}]"], "takes cross-entropy"),
        (["model.num_classes=5"], "has 10 classes but model.num_classes is 5"),
        (["data.options={scaling: none}"], r"data.options.scaling is not an option of cifar"),
        (["data.train_transforms=[hflip]"], "segmentation pipelines"),
        (["model.arch=unet"], "unknown classifier 'unet'"),
        (["data.val_split=val"], "no val split"),
        (["trainer.eval_crops=ten_crop"], r"ten_crop needs data\.crop_size smaller than the \(resized\) images"),
        # Before training: a crop that never fits was found at the first validation, after a whole epoch, nothing saved.
        (["data.crop_size=32", "data.resize_size=30"], r"data\.crop_size 32 is larger than data\.resize_size 30"),
        (["data.crop_size=20"], r"data\.crop_size 20 is larger than the 16x16 images under"),
        (["model.weights=a.pt", "model.encoder_weights=b.pt"], r"model\.weights \(a\.pt\) and model\.encoder_weights \(b\.pt\) both"),
        # Wrong types were tracebacks (slice indices, '>=' between str and int, float('abc')).
        (["data.options.holdout=2.5", "data.val_split=val"], r"data\.options\.holdout is 2\.5; give the number of training images"),
        (["data.options.holdout=true", "data.val_split=val"], r"data\.options\.holdout is True"),
        (["data.options.mean=abc"], r"data\.options\.mean is 'abc'; give a finite number or a list of finite numbers"),
        (["data.options.std=[0.2,x,0.2]"], r"data\.options\.std is \[0\.2, 'x', 0\.2\]"),
        # A holdout with val_split test threw the held-back images away in silence.
        (["data.options.holdout=4"], r"data\.options\.holdout=4 keeps training images back for the val split, but data\.val_split is 'test'"),
        (["data.options.holdout=-1"], r"data\.options\.holdout is -1; give the number of training images"),
        (["data.options.std=.inf"], r"data\.options\.std is inf; give a finite number"),  # was a NaN loss, 'lower optimizer.lr'

    ],
)
def test_classification_config_errors_name_the_key(tmp_path, synthetic, overrides, message):
    cfg = config_from_dict(tiny_config(synthetic), overrides)
    with pytest.raises(SegkitError, match=message):
        build_datasets(cfg)
        build_model_from_config(cfg)
        build_loss_fn(cfg)


def test_config_menus_for_classification():
    with pytest.raises(SegkitError, match="trainer.eval_crops.*center, ten_crop"):
        config_from_dict({"trainer": {"eval_crops": "five"}})
    with pytest.raises(SegkitError, match="data.augment"):
        config_from_dict({"data": {"augment": "autoaugment"}})


# -- recipes -----------------------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["cifar_resnet", "cifar_plain", "cifar_resnet110"])
def test_cifar_recipes_follow_the_paper_and_read_cifar(tmp_path, name):
    from segkit.config import load_config
    from segkit.data import make_synthetic_cifar

    make_synthetic_cifar(tmp_path, n=60, size=32, seed=1)  # CIFAR's own format and size
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.root={tmp_path}"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (cfg.schedule.name, list(cfg.schedule.milestones), cfg.schedule.gamma) == ("multistep", [32000, 48000], 0.1)
    assert cfg.trainer.batch_size == 128 and abs(cfg.trainer.epochs * (50000 // 128) - 64000) < 390
    train_set, val_set = build_datasets(cfg)
    image = train_set[(0, 3)][0]
    assert image.shape == (3, 32, 32) and val_set[0][0].shape == (3, 32, 32)
    # pad 4 + random crop: some border rows/columns of the standardised crop are the zero padding
    zero = (torch.zeros(3, 1, 1) - torch.tensor(train_set.transform.mean_values).view(3, 1, 1)) / torch.tensor(train_set.transform.std_values).view(3, 1, 1)
    padded = [s for s in range(40) if torch.allclose(train_set[(0, s)][0][:, 0, :], zero[:, 0].expand(3, 32))
              or torch.allclose(train_set[(0, s)][0][:, -1, :], zero[:, 0].expand(3, 32))]
    assert padded
    assert build_model_from_config(cfg).__class__.__name__ == "CifarResNet"


def test_imagenet_and_transfer_recipes(tmp_path):
    from segkit.config import load_config

    root = image_folder(tmp_path / "folder", classes=("ants", "bees"), size=(300, 260))
    cfg = load_config(CONFIGS / "imagenet_resnet50.yaml", [f"data.root={root}", "model.num_classes=2"])
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay, cfg.trainer.batch_size) == (0.1, 0.9, 1e-4, 256)
    train_set, val_set = build_datasets(cfg)
    assert train_set[(0, 1)][0].shape == (3, 224, 224) and val_set[0][0].shape == (3, 224, 224)
    ten = build_datasets(load_config(CONFIGS / "imagenet_resnet50.yaml", [f"data.root={root}", "model.num_classes=2",
                                                                           "trainer.eval_crops=ten_crop"]))[1]
    assert ten[0][0].shape == (10, 3, 224, 224)
    head = load_config(CONFIGS / "transfer_resnet18_head.yaml", [f"data.root={root}"])
    model = build_model_from_config(head)
    names = {id(p): n for n, p in model.named_parameters()}
    trained = {names[id(p)] for g in build_optimizer(model, head).param_groups for p in g["params"]}
    assert trained == {"fc.weight", "fc.bias"}
    tune = load_config(CONFIGS / "transfer_resnet18_finetune.yaml", [f"data.root={root}"])
    groups = {g["name"]: g["lr"] for g in build_optimizer(build_model_from_config(tune), tune).param_groups}
    assert groups["encoder"] == pytest.approx(1e-4) and groups["model"] == pytest.approx(1e-3)


def test_synthetic_classification_data_without_sizes_is_cifar_like(tmp_path):
    """data.synthetic left out: the CIFAR-like defaults (16x16), not the segmentation data's 128x128 tiles."""
    cfg = config_from_dict({"task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 10},
                            "data": {"kind": "synthetic", "root": str(tmp_path / "data"), "val_split": "test"}})
    train_set, _ = build_datasets(cfg)
    image, _ = train_set[(0, 0)]
    assert image.shape[-2:] == (16, 16) and len(train_set) == 5000  # 6000, a sixth held out for testing


def test_an_evaluation_crop_larger_than_the_image_is_named_not_padded():
    """torchvision's center_crop zero-pads: a 224 crop of a 40x48 image scored 76 % padding in silence."""
    image = torch.rand(3, 40, 48)
    with pytest.raises(SegkitError, match=r"a centre crop of 224x224 does not fit in a 40x48 image; lower data.crop_size"):
        ClassificationTransform(False, "none", 224)(image)
    with pytest.raises(SegkitError, match="after resizing"):
        ClassificationTransform(False, "none", 224, resize_size=100)(image)
    assert ClassificationTransform(False, "none", 32)(image).shape == (3, 32, 32)


def test_model_weights_load_a_classifier_as_the_resume_hints_say(tmp_path, synthetic):
    """The resume errors advise model.weights=<best.pt> for a new run: it was silently ignored for classifiers."""
    torch.manual_seed(1)
    trained = create_classifier("cifar_resnet20", num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "trained.pt")
    cfg = config_from_dict(tiny_config(synthetic), [f"model.weights={tmp_path / 'trained.pt'}"])
    model = build_model_from_config(cfg)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    import tifffile

    root = tmp_path / "data"
    wide = (np.arange(20 * 24, dtype=np.uint32).reshape(20, 24) * 136).astype(np.uint16)  # 0 .. 65144
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(wide).save(root / split / name / "x.png")
            tifffile.imwrite(root / split / name / "y.tif", wide)
    expected = torch.from_numpy(np.round(wide / 257.0).astype(np.uint8))
    for channels in (1, 3):
        dataset = ImageFolderDataset(root, "train", in_channels=channels)
        for index in range(len(dataset)):
            image, _ = dataset.load(index)
            assert image.shape == (channels, 20, 24) and image.dtype == torch.uint8
            assert all(torch.equal(plane, expected) for plane in image)
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 4, "I").save(root / "train" / "b" / "w.tif")
    eight = ImageFolderDataset(root, "train", in_channels=1)
    index = next(i for i, (path, _) in enumerate(eight.folder.samples) if path.endswith("w.tif"))
    assert torch.equal(eight.load(index)[0][0], torch.arange(64, dtype=torch.uint8).reshape(8, 8) * 4)  # 8-bit values in "I": as before
    Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(root / "train" / "a" / "z.tif")
    dataset = ImageFolderDataset(root, "train")
    with pytest.raises(SegkitError, match=r"z\.tif holds 32-bit integer pixels"):
        [dataset.load(i) for i in range(len(dataset))]


def test_a_resumed_googlenet_keeps_the_input_transform_it_trained_with(tmp_path, synthetic):
    """Resuming with model.weights left out (allowed on resume) rebuilt the net with transform_input off."""
    torch.manual_seed(0)
    torch.save(create_classifier("googlenet", num_classes=10).state_dict(), tmp_path / "tv.pth")  # a plain file: on
    base = tiny_config(synthetic, epochs=2, batch_size=25)
    options = ["model.arch=googlenet", "data.crop_size=16", "data.resize_size=20"]
    cfg = config_from_dict(base, [*options, f"model.weights={tmp_path / 'tv.pth'}"])
    train(cfg, tmp_path / "run", max_steps=2, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["transform_input"] is True
    train(config_from_dict(base, options), tmp_path / "run", resume=True, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["transform_input"] is True
