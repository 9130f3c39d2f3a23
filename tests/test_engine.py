"""Engine: config, checkpoints, exact resume, failure handling."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnseg.engine import checkpoint as ckpt_io
from attnseg.engine.config import TrainConfig, load_config, parse_overrides
from attnseg.engine.trainer import EpochBatchSampler, Trainer, lr_at

from .conftest import write_camvid

DATA = "synthetic:train=12,val=3,size=32x48"


def tiny_cfg(run_dir, **kw) -> TrainConfig:
    base = dict(model="fcn8s_resnet18", data=DATA, run_dir=str(run_dir), crop=(32, 48), scale_range=(0.75, 1.25),
                batch_size=4, iters=6, warmup_iters=2, val_interval=0, ckpt_interval=0, log_interval=1, workers=0,
                progress=False, deterministic=True, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def read_log(run_dir, kind="train"):
    return [r for r in map(json.loads, Path(run_dir, "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_config_yaml_and_overrides(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("model: fcn8s_resnet18\nlr: 0.01\ncrop: [90, 120]\nmodel_kwargs: {variant: 8s}\n")
    cfg = load_config(p, ["lr=0.02", "iters=7", "model_kwargs.dropout=0.0", "time_budget=null"])
    assert cfg.lr == 0.02 and cfg.iters == 7 and cfg.crop == (90, 120)
    assert cfg.model_kwargs == {"variant": "8s", "dropout": 0.0} and cfg.time_budget is None
    with pytest.raises(KeyError, match="unknown config keys"):
        load_config(p, ["lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_sampler_shards_global_batches():
    one = list(EpochBatchSampler(10, 4, seed=1, epoch=2))
    r0 = list(EpochBatchSampler(10, 2, seed=1, epoch=2, rank=0, world=2))
    r1 = list(EpochBatchSampler(10, 2, seed=1, epoch=2, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(EpochBatchSampler(10, 4, seed=1, epoch=2, start=1)) == one[1:]
    assert list(EpochBatchSampler(10, 4, seed=1, epoch=3)) != one


def test_lr_schedule_warmup_and_poly():
    cfg = TrainConfig(lr=1.0, warmup_iters=10, warmup_ratio=0.1, poly_power=1.0, min_lr=0.0)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 5, 0.5) == pytest.approx(0.5 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 20, 0.25) == pytest.approx(0.75)
    assert lr_at(cfg, 20, 1.0) == 0.0


def test_resume_continues_as_if_uninterrupted(tmp_path, monkeypatch):
    Trainer(tiny_cfg(tmp_path / "a")).fit()
    straight = read_log(tmp_path / "a")
    w_straight = ckpt_io.read_checkpoint(tmp_path / "a" / "checkpoints" / "model.safetensors")[0]

    original = Trainer.train_step

    def interrupted(self, batch):
        if self.step == 3:  # after 3 completed steps (mid-epoch: 12 images / batch 4)
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path / "b")).fit()
    state = ckpt_io.load_training_state(tmp_path / "b" / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["batch_in_epoch"] == 0 and state["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer(tiny_cfg(tmp_path / "b")).fit()
    resumed = read_log(tmp_path / "b")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    w_resumed = ckpt_io.read_checkpoint(tmp_path / "b" / "checkpoints" / "model.safetensors")[0]
    for k in w_straight:
        assert torch.allclose(w_straight[k].float(), w_resumed[k].float(), atol=1e-5), k


def test_resume_mid_epoch(tmp_path, monkeypatch):
    cfg = dict(data="synthetic:train=16,val=3,size=32x48")
    Trainer(tiny_cfg(tmp_path / "a", **cfg)).fit()
    original = Trainer.train_step

    def interrupted(self, batch):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path / "b", **cfg)).fit()
    assert ckpt_io.load_training_state(tmp_path / "b/checkpoints/last.pt")["batch_in_epoch"] == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer(tiny_cfg(tmp_path / "b", **cfg)).fit()
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)


def test_run_directory_contents_and_checkpoint_metadata(tmp_path):
    run = tmp_path / "run"
    metrics = Trainer(tiny_cfg(run, iters=2), command="attnseg train test").fit()
    for name in ("config.yaml", "log.jsonl", "metrics.json", "per_class.csv", "confusion.csv", "metrics.txt",
                 "learning_curve.png", "checkpoints/last.pt", "checkpoints/model.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "pictures").glob("*.png"))
    sd, meta = ckpt_io.read_checkpoint(run / "checkpoints" / "model.safetensors")
    assert meta["model"] == "fcn8s_resnet18" and meta["command"] == "attnseg train test"
    assert meta["classes"]["names"][0] == "background" and meta["num_params"] > 1e6
    assert meta["metrics"]["mIoU"] == pytest.approx(metrics["mIoU"])
    model, _ = ckpt_io.load_model(run / "checkpoints" / "model.safetensors")
    x = torch.randn(1, 3, 32, 48)
    trained = Trainer(tiny_cfg(run, iters=2)).model.eval()  # resumes the finished run: same weights
    assert torch.allclose(model(x)["logits"], trained(x)["logits"], atol=1e-5)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    ckpt_io.atomic_write_text(target, "old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt_io.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_nan_loss_stops_with_message_and_keeps_state(tmp_path):
    with pytest.raises(FloatingPointError, match="Lower lr"):
        Trainer(tiny_cfg(tmp_path, lr=1e30, warmup_iters=0, grad_clip=None, optimizer="sgd")).fit()
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_bad_label_in_training_names_the_file(tmp_path):
    def label(split, i):
        lab = np.zeros((32, 48), np.uint8)
        lab[0, 0] = 37 if (split, i) == ("train", 2) else 0
        return lab

    root = write_camvid(tmp_path / "cv", 4, (32, 48), label)
    with pytest.raises(ValueError, match=r"label value 37 in .*s2\.png exceeds the 11 classes of camvid"):
        Trainer(tiny_cfg(tmp_path / "run", data=f"camvid:{root}"))


def test_class_weights_list_and_power(tmp_path):
    from types import SimpleNamespace

    from attnseg.engine.trainer import class_weights_for
    ds = SimpleNamespace(spec=SimpleNamespace(num_classes=2, ignore_index=255))
    w = class_weights_for(TrainConfig(class_weights=[1.0, 4.0], class_weight_power=0.5), ds, tmp_path)
    np.testing.assert_allclose(w, [1.0, 2.0])
    with pytest.raises(ValueError, match="2 classes"):
        class_weights_for(TrainConfig(class_weights=[1.0]), ds, tmp_path)
    with pytest.raises(ValueError, match="median_freq"):
        class_weights_for(TrainConfig(class_weights="inverse"), ds, tmp_path)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from attnseg.data import parse_data_spec
    from attnseg.models import MODELS
    cfg = load_config(path)
    assert cfg.model in MODELS
    parse_data_spec(cfg.data)
