"""The GPU code paths of training, checked on the CPU with stand-ins for what only a GPU has:
bfloat16 only where native, resume across CPU/GPU/AMP settings and GPU counts, one host sync per
log interval, U-Net weight maps from the data pipeline, trainer.sync_bn off CUDA."""

from __future__ import annotations

import inspect
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

from segkit import SegkitError
from segkit.config import config_from_dict
from segkit.engine import checkpoint
from segkit.engine.amp import native_bf16, resolve_amp
from segkit.engine.checkpoint import capture_rng, load_checkpoint, restore_grad_scaler, restore_rng
from segkit.engine.distributed import DistInfo, SeededSampler, resume_batch
from segkit.engine.train import train

CUDA = torch.device("cuda")  # a device object only: nothing runs on it here


def tiny_config(root: Path, loss: list | None = None, **trainer) -> dict:
    return {
        "model": {"arch": "unet", "encoder": "resnet18", "num_classes": 3, "in_channels": 1,
                  "decoder": {"decoder_channels": [16, 16, 16, 16, 16]}},
        "data": {"kind": "synthetic", "root": str(root), "synthetic": {"n": 8, "size": 64, "seed": 1},
                 "train_transforms": ["hflip", {"name": "rotate", "limit": 20}], "val_transforms": []},
        "loss": loss or [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5, "mode": "multiclass"}],
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "poly", "warmup_iters": 2},
        "trainer": {"epochs": 2, "batch_size": 2, "seed": 3, "log_interval": 1, **trainer},
        "output": {"plots": False},
    }


# --- bfloat16 only where the GPU computes it natively ---------------------------------------------

def fake_gpu(monkeypatch, native: bool, *others: bool) -> None:
    """GPUs as torch.cuda describes them: GPU 0 an Ampere one (native bf16) or a V100/T4 (compute
    capability 7: bf16 emulated only), then ``others`` (GPU 1, 2, ...); the current device is GPU 0."""
    majors = [8 if n else 7 for n in (native, *others)]
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: type("Props", (), {"major": majors[index]})())


def test_native_bfloat16_is_asked_of_the_training_gpu_not_the_current_one(monkeypatch):
    """On a machine mixing generations, trainer.device cuda:1 in one process (the current device
    stays GPU 0) decides by GPU 1; under torchrun set_device makes them one."""
    fake_gpu(monkeypatch, False, True)
    assert not native_bf16("cuda") and not native_bf16("cuda:0") and native_bf16("cuda:1")
    assert resolve_amp(True, "auto", torch.device("cuda:1")) == (True, torch.bfloat16, False)
    assert resolve_amp(True, "auto", torch.device("cuda:0")) == (True, torch.float16, True)
    fake_gpu(monkeypatch, True, False)
    assert native_bf16("cuda") and not native_bf16(torch.device("cuda", 1)) and not native_bf16("cpu")
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: torch's rule, every AMD GPU it supports
    assert native_bf16("cuda:1")


@pytest.mark.parametrize(("native", "asked", "expected"), [
    (True, "auto", (True, torch.bfloat16, False)),
    (False, "auto", (True, torch.float16, True)),
    (True, "bfloat16", (True, torch.bfloat16, False)),
    (False, "bfloat16", (True, torch.float16, True)),  # falls back, with a warning
    (True, "float16", (True, torch.float16, True)),
    (False, "float16", (True, torch.float16, True)),
])
def test_resolve_amp_takes_bfloat16_only_where_native(monkeypatch, caplog, native, asked, expected):
    fake_gpu(monkeypatch, native)
    with caplog.at_level(logging.WARNING, logger="segkit"):
        assert resolve_amp(True, asked, CUDA) == expected
    warned = "only emulates bfloat16" in caplog.text
    assert warned == (asked == "bfloat16" and not native)
    # The trainer's settings are this decision.
    import segkit.engine.train as engine

    cfg = config_from_dict(tiny_config(Path("unused")), [f"trainer.amp_dtype={asked}"])
    assert engine._amp_settings(cfg, CUDA) == expected


def test_resolve_amp_is_off_off_cuda_and_checks_the_name(monkeypatch):
    fake_gpu(monkeypatch, True, True)
    for dtype in ("auto", "bfloat16", "float16"):
        assert resolve_amp(True, dtype, torch.device("cpu")) == (False, torch.float32, False)
        assert resolve_amp(False, dtype, CUDA) == (False, torch.float32, False)
    assert resolve_amp(True, "auto", "cuda:1") == (True, torch.bfloat16, False)
    with pytest.raises(SegkitError, match="trainer.amp_dtype is 'fp8'"):
        resolve_amp(True, "fp8", CUDA)


# --- resume across settings -----------------------------------------------------------------------

def test_grad_scaler_state_crosses_amp_settings():
    saved_enabled = {"scale": 128.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    # Saved on the CPU / with bfloat16 ({}), resumed with float16: a fresh scaler, not GradScaler's RuntimeError.
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what the trainer used to hit
    note = restore_grad_scaler(fresh, {})
    assert "fresh grad scaler" in note and fresh.get_scale() == 65536.0
    # The reverse: a saved scale, resumed without a scaler.
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert "not used" in restore_grad_scaler(disabled, saved_enabled) and disabled.state_dict() == {}
    # Same settings: loaded as saved, nothing to say.
    same = torch.amp.GradScaler("cpu", enabled=True)
    assert restore_grad_scaler(same, saved_enabled) is None
    assert same.get_scale() == 128.0 and same.state_dict()["_growth_tracker"] == 7
    assert restore_grad_scaler(torch.amp.GradScaler("cpu", enabled=False), {}) is None
    with pytest.raises(SegkitError, match="grad-scaler state is not one GradScaler reads"):
        restore_grad_scaler(torch.amp.GradScaler("cpu", enabled=True), {"scale": 2.0})


@pytest.mark.parametrize("visible", [0, 1, 2, 3])
def test_cuda_rng_states_of_two_gpus_restore_on_any_number(monkeypatch, visible):
    state = capture_rng()
    saved = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    state["cuda"] = saved
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: restored.append((int(new[0]), device)))

    def set_all(states):  # torch's: device i for every saved state, which fails with fewer GPUs
        raise AssertionError("set_rng_state_all indexes GPUs that may not exist")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    torch.manual_seed(5)
    expected_cpu = torch.rand(3)
    torch.manual_seed(5)
    state["torch"] = torch.get_rng_state()
    torch.manual_seed(99)
    note = restore_rng(state)
    assert torch.equal(torch.rand(3), expected_cpu)  # the CPU state is restored in every case
    assert restored == [(1, 0), (2, 1)][:visible]  # GPU i gets the state saved for GPU i
    assert (note is None) == (visible == 2)
    if note:
        assert f"2 GPU(s) and {visible} are visible" in note


def test_cuda_rng_state_is_the_training_gpu_s_and_goes_to_each_rank_s_own_gpu(monkeypatch):
    """Under torchrun rank 0 writes last.pt: it saves the generator of the GPU it trains on (not its
    view of every GPU: GPU r there is one rank r never drew from), and rank r, on GPU r, restores
    that state into GPU r. Every rank seeds alike and draws alike, so rank 0's state is rank r's."""
    generators = {0: 10, 1: 11, 2: 12}  # each GPU's generator, as this process sees it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((16,), generators[torch.device(device).index], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((16,), generators[i], dtype=torch.uint8) for i in range(3)])
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: restored.append((int(new[0]), torch.device(device).index)))
    state = capture_rng(torch.device("cuda", 1))  # a process training on GPU 1
    assert int(state["cuda_device"][0]) == 11
    for rank in (0, 2):
        restored.clear()
        assert restore_rng(state, torch.device("cuda", rank)) is None
        assert restored == [(11, rank)]  # the saved generator, into this rank's GPU only
    restored.clear()
    assert restore_rng(state, torch.device("cpu")) is None and restored == []  # resumed on the CPU: unused
    assert "cuda_device" not in capture_rng(torch.device("cpu")) and "cuda_device" not in capture_rng()


@pytest.mark.parametrize(("saved_world", "world", "accum"), [(2, 1, 1), (1, 2, 1), (2, 3, 1), (4, 2, 2), (3, 3, 1)])
def test_a_mid_epoch_position_moves_to_another_number_of_processes(saved_world, world, accum):
    """k batches on each of W ranks consumed the first k*b*W samples of the epoch's order; on W' ranks
    the run continues from there (rounded down to a window): nothing skipped, fewer than W'*b*accum repeated."""
    n, batch_size, k = 48, 2, 4  # 48: no padding repeats for 1-4 ranks
    data = list(range(n))
    order = [i for i, _ in SeededSampler(data, shuffle=True, seed=1)]  # the epoch's order, one rank
    consumed = set()
    for rank in range(saved_world):
        sampler = SeededSampler(data, shuffle=True, seed=1, rank=rank, world_size=saved_world)
        consumed |= {i for i, _ in list(sampler)[: k * batch_size]}
    assert consumed == set(order[: k * batch_size * saved_world])
    moved = resume_batch(k, batch_size, accum, saved_world, world)
    assert moved % accum == 0
    rest = []
    for rank in range(world):
        sampler = SeededSampler(data, shuffle=True, seed=1, rank=rank, world_size=world)
        sampler.set_epoch(0, start=moved * batch_size)
        rest += [i for i, _ in sampler]
    assert consumed | set(rest) == set(data)  # no sample skipped
    assert len(consumed & set(rest)) < world * batch_size * accum  # few repeated
    if saved_world == world:
        assert moved == k and not consumed & set(rest)


def test_resume_across_amp_settings_continues(tmp_path, data_root, monkeypatch, caplog):
    """A run started on the CPU (scaler disabled: its state is {}) resumed with float16 AMP (scaler
    enabled) continues with a fresh scaler and says so; and the reverse."""
    import segkit.engine.train as engine

    cfg = config_from_dict(tiny_config(data_root, epochs=2))
    train(cfg, tmp_path / "run", max_steps=2, progress=False)  # CPU: no AMP, empty scaler state
    assert load_checkpoint(tmp_path / "run" / "last.pt")["scaler"] == {}
    monkeypatch.setattr(engine, "_amp_settings", lambda cfg, device: (True, torch.float16, True))  # "a GPU with fp16"
    with caplog.at_level(logging.WARNING, logger="segkit"):
        result = train(cfg, tmp_path / "run", max_steps=4, resume=True, progress=False)
    assert result.steps == 4 and "starting a fresh grad scaler" in caplog.text
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["scaler"]["scale"] > 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    caplog.clear()
    monkeypatch.setattr(engine, "_amp_settings", lambda cfg, device: (False, torch.float32, False))  # back on the CPU
    with caplog.at_level(logging.WARNING, logger="segkit"):
        result = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert result.steps == 6 and "grad-scaler state is not used" in caplog.text


@pytest.mark.parametrize(("override", "message"), [
    ("model.decoder.decoder_channels=[8,8,8,8,8]", r"model.decoder.decoder_channels is \[8, 8, 8, 8, 8\] here but the run in .* was "
                                                   r"trained with \[16, 16, 16, 16, 16\]"),
    # The optimizer's state held the old rate: the new one was ignored, yet written to config.yaml and the checkpoints.
    ("optimizer.lr=0.3", r"optimizer.lr is 0.3 here but the run .* was trained with 0.01; a resumed run keeps its optimizer"),
    # The position in the epoch counts batches of the saved size: another size skipped or repeated samples.
    ("trainer.batch_size=1", r"trainer.batch_size is 1 here but .* trained with 2"),
    ("trainer.grad_accum=2", r"trainer.grad_accum is 2 here"),
    ("schedule.name=cosine", r"schedule.name is 'cosine' here .* \(and 1 more: schedule.min_lr\)|schedule.name is 'cosine'"),
])
def test_resume_with_another_model_or_optimizer_is_a_clear_error_and_keeps_the_run_s_config(tmp_path, data_root, override, message):
    train(config_from_dict(tiny_config(data_root)), tmp_path / "run", max_steps=1, progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    other = config_from_dict(tiny_config(data_root), [override])
    with pytest.raises(SegkitError, match=message + r".*model.weights=.*best.pt"):
        train(other, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # was overwritten before the refusal


def test_resume_may_change_the_length_and_the_logging(tmp_path, data_root):
    train(config_from_dict(tiny_config(data_root)), tmp_path / "run", max_steps=1, progress=False)
    longer = config_from_dict(tiny_config(data_root), ["trainer.epochs=3", "trainer.log_interval=2", "model.encoder_weights=null"])
    assert train(longer, tmp_path / "run", resume=True, progress=False, max_steps=2).steps == 2
    assert "epochs: 3" in (tmp_path / "run" / "config.yaml").read_text()
    # --max-steps counts the run's steps: at or past it, nothing to do (it used to take one more step each time).
    with pytest.raises(SegkitError, match=r"is at step 2 already, --max-steps 2 counts every step of the run"):
        train(longer, tmp_path / "run", resume=True, progress=False, max_steps=2)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


# --- at most one host synchronisation per log interval ---------------------------------------------

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


def count_syncs(monkeypatch) -> list[str]:
    """Patch the Tensor methods that read a value back to the host; record those called from segkit's
    training code while segkit.engine.loop.train_epoch runs. The data pipeline (sampler, dataset,
    transforms: host tensors, in DataLoader workers on a GPU machine) and torch's own internals (CPU
    step counters) are not counted."""
    import segkit.engine.loop as loop
    import segkit.engine.train as engine

    package = str(Path(loop.__file__).resolve().parents[1])
    data_dir = str(Path(package) / "data")
    loader_dir = str(Path(torch.utils.data.__file__).parent)

    def in_data_pipeline(frame) -> bool:
        while frame is not None:
            if frame.f_code.co_filename.startswith(loader_dir):
                return True
            frame = frame.f_back
        return False
    calls: list[str] = []
    active = [False]
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if (active[0] and caller.startswith(package) and not caller.startswith(data_dir)
                    and not in_data_pipeline(sys._getframe(1))):
                calls.append(f"{_name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    real_epoch = loop.train_epoch

    def epoch(*args, **kwargs):
        active[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            active[0] = False

    monkeypatch.setattr(engine, "train_epoch", epoch)
    return calls


def test_one_host_sync_per_log_interval(tmp_path, data_root, monkeypatch):
    calls = count_syncs(monkeypatch)
    # 6 training images, batch 1: 6 steps; log points at steps 3 and 6 (6 is also the epoch's end).
    cfg = config_from_dict(tiny_config(data_root, epochs=1, batch_size=1, log_interval=3))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 6
    assert len(calls) == 2, calls  # (the loop used to read back 4 times per step: 24)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [3, 6]
    # The epoch's loss is the mean of its 6 batch losses; the records' window means average to it.
    epoch_loss = next(r["train_loss"] for r in records if r["kind"] == "epoch")
    assert math.isclose(epoch_loss, sum(r["loss"] for r in train_records) / 2, rel_tol=1e-9)


def test_classification_training_reads_back_once_per_log_interval_too(tmp_path, monkeypatch):
    """The training top-1 error is counted on the device: no label range check per step (two
    read-backs a step; the dataset's labels fit model.num_classes, checked when it is built)."""
    from segkit.data import make_synthetic_cifar

    root = make_synthetic_cifar(tmp_path / "cifar", n=24, size=16, seed=0)
    calls = count_syncs(monkeypatch)
    cfg = config_from_dict({
        "task": "classification", "model": {"arch": "cifar_resnet20", "num_classes": 10},
        "data": {"kind": "synthetic", "root": str(root), "val_split": "test", "synthetic": {"n": 24, "size": 16, "seed": 0}},
        "schedule": {"name": "constant"}, "output": {"plots": False},
        "trainer": {"epochs": 1, "batch_size": 4, "seed": 0, "log_interval": 3, "device": "cpu"}})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.steps == 5  # 20 training images
    assert len(calls) == 2, calls  # log points at steps 3 and 5 (the label check made 10 more)


def _poison_loss_at(monkeypatch, batch: int, poison=lambda value, logits: value * float("nan")) -> list[int]:
    """Make the training loss ``poison(loss, logits)`` (NaN) at its ``batch``-th call; the list of calls made."""
    import segkit.engine.train as engine

    real_build = engine.build_loss_fn
    calls: list[int] = []

    def poisoned(cfg):
        loss_fn = real_build(cfg)

        class Poisoned(torch.nn.Module):
            def forward(self, logits, target, **extra):
                calls.append(1)
                value = loss_fn(logits, target, **extra)
                return poison(value, logits) if len(calls) == batch else value

        return Poisoned()

    monkeypatch.setattr(engine, "build_loss_fn", poisoned)
    return calls


def test_a_nan_loss_while_last_pt_is_still_being_written_names_it(tmp_path, data_root, monkeypatch):
    """last.pt is written in the background: the error waits for that write before it says whether
    a last.pt keeps the last good state (a slow disk made it say none was written)."""
    import time

    real = checkpoint.save_checkpoint

    def slow(state, path):
        time.sleep(1.0)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow)
    cfg = config_from_dict(tiny_config(data_root, epochs=2, batch_size=1, log_interval=1, checkpoint_interval=0))
    _poison_loss_at(monkeypatch, 7)  # the first step of epoch 2, right after epoch 1's last.pt was submitted
    with pytest.raises(SegkitError, match=r"the loss became nan at step 7 \(epoch 2\).*last.pt keeps the last good state"):
        train(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6


def test_a_nan_loss_inside_a_log_window_names_its_step(tmp_path, data_root, monkeypatch):
    """log_interval 5, the loss NaN at step 8 (epoch 2): noticed at the log point of step 10, the error
    names step 8, and last.pt keeps the state of step 6 (end of epoch 1), bit-identical to a clean run's."""
    cfg = config_from_dict(tiny_config(data_root, epochs=2, batch_size=1, log_interval=5, checkpoint_interval=0))
    train(cfg, tmp_path / "clean", max_steps=6, progress=False)

    calls = _poison_loss_at(monkeypatch, 8)
    with pytest.raises(SegkitError, match=r"the loss became nan at step 8 \(epoch 2\).*last.pt keeps the last good state"):
        train(cfg, tmp_path / "run", progress=False)
    assert len(calls) == 10  # it trained on to the log point, not past it
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    clean = load_checkpoint(tmp_path / "clean" / "last.pt")
    assert kept["step"] == 6
    for key, value in clean["model"].items():
        assert torch.equal(kept["model"][key], value), key
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [5]  # nothing logged from the bad window


@pytest.mark.parametrize("clip", [None, 1.0])
def test_gradients_that_overflow_under_a_finite_loss_stop_the_run_before_last_pt_holds_them(tmp_path, data_root, monkeypatch, clip):
    """No grad scaler (float32 here, bfloat16 AMP on a GPU): a step whose loss is finite but whose
    gradients are not makes every weight NaN while its window's losses all look fine. At the last
    step of epoch 2 the end-of-epoch last.pt used to take those weights; now the error names the
    step and last.pt keeps epoch 1's state, finite (with clipping too: clip_grad_norm_ turns an
    infinite norm into NaN gradients)."""
    def infinite_gradient(value, logits):  # + 0 * sqrt(0): the value stays, the gradient is 0 * inf = NaN
        total = logits.float().sum()
        return value + 0.0 * torch.sqrt(total - total.detach())

    _poison_loss_at(monkeypatch, 12, infinite_gradient)
    cfg = config_from_dict(tiny_config(data_root, epochs=3, batch_size=1, log_interval=5, checkpoint_interval=0,
                                       clip_grad_norm=clip))
    with pytest.raises(SegkitError, match=r"gradients' norm became nan at step 12 \(epoch 2\) while the loss stayed finite.*"
                                          r"last.pt keeps the last good state"):
        train(cfg, tmp_path / "run", progress=False)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 6
    assert all(torch.isfinite(value).all() for value in kept["model"].values() if value.is_floating_point())


# --- U-Net weight maps from the data pipeline ------------------------------------------------------

WEIGHT_MAP_LOSS = [{"name": "weight_map_ce", "weight": 1.0, "w0": 10.0, "sigma": 3.0},
                   {"name": "dice", "weight": 0.5, "mode": "multiclass"}]


def test_dataset_weight_maps_give_the_loss_computed_on_the_fly(data_root):
    from segkit.engine.builders import build_datasets, build_loss_fn
    from segkit.losses.weight_map import unet_weight_map

    cfg = config_from_dict(tiny_config(data_root, loss=WEIGHT_MAP_LOSS))
    train_set, val_set = build_datasets(cfg)
    loss_fn = build_loss_fn(cfg)
    assert len(val_set[0]) == 2  # validation items stay (image, mask)
    for item in [(0, 11), (3, 12345)]:
        image, mask, weight_map = train_set[item]
        assert weight_map.shape == mask.shape and weight_map.dtype == torch.float32
        # The map of the *augmented* mask (the same seed gives the same augmentation).
        torch.testing.assert_close(weight_map, unet_weight_map(train_set[item][1], w0=10.0, sigma=3.0, ignore_index=255))
        assert weight_map.max() > 2.0  # the border term is there (the synthetic masks have several cells)
        logits = torch.randn(1, 3, *mask.shape, generator=torch.Generator().manual_seed(item[1]))
        from_dataset = loss_fn(logits, mask[None], weight_map=weight_map[None])
        on_the_fly = loss_fn(logits, mask[None])
        torch.testing.assert_close(from_dataset, on_the_fly)
        assert not torch.allclose(from_dataset, loss_fn(logits, mask[None], weight_map=torch.ones_like(weight_map)[None]))


def test_training_with_weight_map_ce_takes_the_maps_from_the_loader(tmp_path, data_root, monkeypatch):
    import segkit.losses.cross_entropy as cross_entropy

    def no_maps_here(*args, **kwargs):
        raise AssertionError("the weight map was computed in the training process, not in the data pipeline")

    monkeypatch.setattr(cross_entropy, "unet_weight_map", no_maps_here)
    cfg = config_from_dict(tiny_config(data_root, loss=WEIGHT_MAP_LOSS), ["data.num_workers=1"])
    result = train(cfg, tmp_path / "run", max_steps=2, progress=False)
    assert result.steps == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")


def test_weight_map_terms_with_different_settings_are_refused(data_root):
    from segkit.engine.builders import build_datasets

    loss = [{"name": "weight_map_ce", "w0": 10.0}, {"name": "weight_map_ce", "w0": 5.0}]
    with pytest.raises(SegkitError, match="weight_map_ce terms with different"):
        build_datasets(config_from_dict(tiny_config(data_root, loss=loss)))


# --- trainer.sync_bn off CUDA ------------------------------------------------------------------------

def test_sync_bn_under_torchrun_on_the_cpu_is_a_user_error_before_any_work(tmp_path, data_root, monkeypatch):
    import segkit.engine.train as engine

    monkeypatch.setattr(engine, "init_distributed", lambda device_type: DistInfo(rank=0, world_size=2))
    cfg = config_from_dict(tiny_config(data_root), ["trainer.sync_bn=true", "trainer.device=cpu"])
    with pytest.raises(SegkitError, match=r"trainer.sync_bn needs CUDA GPUs .*set trainer.sync_bn=false"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # raised before the run directory, data or model


def test_sync_bn_in_one_process_is_ignored(tmp_path, data_root):
    cfg = config_from_dict(tiny_config(data_root), ["trainer.sync_bn=true", "trainer.device=cpu"])
    assert train(cfg, tmp_path / "run", max_steps=1, progress=False).steps == 1


def test_checkpoints_record_the_number_of_processes(tmp_path, data_root):
    train(config_from_dict(tiny_config(data_root)), tmp_path / "run", max_steps=1, progress=False)
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["world_size"] == 1


def test_a_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path, data_root, monkeypatch):
    """With the default checkpoint_interval (minutes) no last.pt exists yet at a NaN in epoch 2: the
    error says so instead of pointing at a file that is not there."""
    cfg = config_from_dict(tiny_config(data_root, epochs=2, batch_size=1, log_interval=5))
    _poison_loss_at(monkeypatch, 8)
    with pytest.raises(SegkitError, match=r"the loss became nan at step 8 \(epoch 2\); training stopped and no last.pt was written yet"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
