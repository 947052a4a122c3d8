"""CIFAR "python version" batch files: the reader on generated files of the real format, its refusals, the synthetic twin."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit import SegkitError
from segkit.data import CifarDataset, ClassificationTransform, make_synthetic_cifar
from segkit.data.cifar import read_cifar_batch
from segkit.data.classification import channel_stats

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_batch(path: Path, obj: object, protocol: int = 2) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def cifar10(root: Path, per_batch: int = 3, protocol: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10 as the archive has it: five training batches, test_batch, batches.meta; bytes keys."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, per_batch).tolist()
        write_batch(root / name, {b"batch_label": name.encode(), b"labels": lab, b"data": data,
                                  b"filenames": [b"x.png"] * per_batch}, protocol)
        if name != "test_batch":
            rows.append(data)
            labels += lab
        else:
            test_rows, test_labels = data, lab
    write_batch(root / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                        b"num_vis": 3072}, protocol)
    return {"train": np.concatenate(rows), "train_labels": np.array(labels), "test": test_rows, "test_labels": np.array(test_labels)}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pixels_and_labels_round_trip(tmp_path, protocol):
    ref = cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = CifarDataset(tmp_path, "train")  # the parent folder is found too
    test = CifarDataset(tmp_path / "cifar-10-batches-py", "test")
    assert train.classes == CIFAR10_NAMES and len(train) == 15 and len(test) == 3
    assert train.targets.tolist() == ref["train_labels"].tolist()  # batches 1..5 in order
    assert test.targets.tolist() == ref["test_labels"].tolist()
    # Each row is three 32x32 planes (R, G, B), row-major: pixel (c, y, x) is entry c*1024 + y*32 + x.
    for i, c, y, x in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7), (7, 2, 16, 16)]:
        assert int(train.images[i, c, y, x]) == int(ref["train"][i, c * 1024 + y * 32 + x])
    image, label = train[4]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label.dtype == torch.int64
    assert int(label) == ref["train_labels"][4]
    assert torch.equal(image, train.images[4].float() / 255)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 2)):
        write_batch(tmp_path / name, {b"filenames": [b"a"] * n, b"batch_label": b"x", b"fine_labels": list(range(90, 90 + n)),
                                      b"coarse_labels": [19 - i for i in range(n)], b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    write_batch(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                    b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    fine = CifarDataset(tmp_path, "train")
    coarse = CifarDataset(tmp_path, "test", labels="coarse")
    assert fine.num_classes == 100 and fine.targets.tolist() == [90, 91, 92, 93, 94, 95] and fine.classes[93] == "f93"
    assert coarse.num_classes == 20 and coarse.targets.tolist() == [19, 18]


def test_holdout_splits_the_training_batches(tmp_path):
    ref = cifar10(tmp_path, per_batch=4)
    train = CifarDataset(tmp_path, "train", holdout=5)
    val = CifarDataset(tmp_path, "val", holdout=5)
    assert len(train) == 15 and len(val) == 5
    assert torch.equal(torch.cat([train.targets, val.targets]), torch.from_numpy(ref["train_labels"]))
    with pytest.raises(SegkitError, match="no val split.*val_split=test.*holdout"):
        CifarDataset(tmp_path, "val")
    with pytest.raises(SegkitError, match="splits train and test"):
        CifarDataset(tmp_path, "validation")


class _Exploit:
    """A pickle that would create a file when unpickled by plain pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_pickle_with_other_objects_is_refused_without_running_it(tmp_path):
    cifar10(tmp_path)
    target = tmp_path / "created_by_pickle"
    write_batch(tmp_path / "data_batch_3", {b"data": _Exploit(target), b"labels": []})
    with pytest.raises(SegkitError, match=r"data_batch_3 holds a Python object \(.*open\).*refuses"):
        CifarDataset(tmp_path, "train")
    assert not target.exists()
    with (tmp_path / "data_batch_3").open("rb") as f:  # plain pickle would have run it
        pickle.load(f)
    assert target.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"labels": [1, 2]}, r"data_batch_2 has no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, r"data_batch_2: 'data' is a float32 array"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}, r"not three square planes"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, r"2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, r"label 12, outside the 10 classes"),
        ([1, 2, 3], r"data_batch_2 holds a list"),
    ],
)
def test_damaged_batches_name_the_file_and_the_problem(tmp_path, content, message):
    cifar10(tmp_path)
    write_batch(tmp_path / "data_batch_2", content)
    with pytest.raises(SegkitError, match=message):
        CifarDataset(tmp_path, "train")


def test_truncated_and_missing_files(tmp_path):
    cifar10(tmp_path)
    data = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(SegkitError, match="test_batch is not a readable pickle.*truncated"):
        CifarDataset(tmp_path, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegkitError, match="holds no CIFAR batch files"):
        CifarDataset(tmp_path / "empty", "train")
    with pytest.raises(SegkitError, match="CIFAR folder .*nothing_here does not exist"):
        CifarDataset(tmp_path / "nothing_here", "train")
    with pytest.raises(SegkitError, match="does not exist"):
        read_cifar_batch(tmp_path / "data_batch_9")


def test_channel_stats_match_torch(tmp_path):
    images = torch.randint(0, 256, (7, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_pad_crop_gives_one_of_the_padded_crops_and_flips(tmp_path):
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4)).float() / 255
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 8, left : left + 8]
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop.flip(-1)
    transform = ClassificationTransform(True, "pad_crop", None, padding=4)
    seen = set()
    for seed in range(200):
        out = transform(image, torch.Generator().manual_seed(seed))
        assert torch.equal(out, transform(image, torch.Generator().manual_seed(seed)))  # a function of the seed
        matches = [key for key, crop in candidates.items() if torch.equal(out, crop)]
        assert matches, seed
        seen.update(matches)
    assert {flip for _, _, flip in seen} == {False, True}
    assert {top for top, _, _ in seen} == set(range(9)) and {left for _, left, _ in seen} == set(range(9))
    # standardisation after the crop
    normalised = ClassificationTransform(False, size=None, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])(image)
    expected = (image.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    assert torch.allclose(normalised, expected)


def test_synthetic_cifar_round_trips_through_the_reader(tmp_path):
    make_synthetic_cifar(tmp_path, n=120, size=16, seed=3)
    train, test = CifarDataset(tmp_path, "train"), CifarDataset(tmp_path, "test")
    assert len(train) == 100 and len(test) == 20 and train.num_classes == 10 and train.classes[0] == "disk"
    assert train.images.shape == (100, 3, 16, 16)
    assert torch.bincount(torch.cat([train.targets, test.targets]), minlength=10).tolist() == [12] * 10
    again = tmp_path / "again"
    make_synthetic_cifar(again, n=120, size=16, seed=3)
    assert (again / "data_batch_1").read_bytes() == (tmp_path / "data_batch_1").read_bytes()  # deterministic


def test_coarse_labels_on_cifar10_and_a_holdout_of_everything_are_named(tmp_path):
    cifar10(tmp_path)
    with pytest.raises(SegkitError, match="holds CIFAR-10, which has one set of 10 labels"):
        CifarDataset(tmp_path, "train", labels="coarse")
    with pytest.raises(SegkitError, match=r"keeps back every one of the \d+ training images; use fewer \(e.g. \d+, a tenth\)"):
        CifarDataset(tmp_path, "train", holdout=10**6)
