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
                progress=False, deterministic=True, lr=1e-3, precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def interrupt_at(monkeypatch, step: int) -> None:
    """Make training raise KeyboardInterrupt (as Ctrl-C would) when it reaches ``step`` completed steps."""
    original = Trainer.train_step

    def interrupted(self, batch):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)


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

    interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path / "b")).fit()
    state = ckpt_io.load_training_state(tmp_path / "b" / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["batch_in_epoch"] == 0 and state["epoch"] == 1
    monkeypatch.undo()
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
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path / "b", **cfg)).fit()
    assert ckpt_io.load_training_state(tmp_path / "b/checkpoints/last.pt")["batch_in_epoch"] == 2
    monkeypatch.undo()
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


def test_nan_stop_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    """Weights broken after step 3 (NaN): the NaN stop must not overwrite last.pt (step 2) and must say so."""
    original = Trainer.train_step

    def poisoned(self, batch):
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match=r"lower lr.*last\.pt holds step 2, the last finite state"):
        Trainer(tiny_cfg(tmp_path, ckpt_interval=2)).fit()
    state = ckpt_io.load_training_state(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2 and not ckpt_io.tensors_finite(state["model"])
    assert not (tmp_path / "checkpoints" / "model.safetensors").exists()


def test_exploding_lr_never_writes_a_non_finite_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="lower lr") as err:
        Trainer(tiny_cfg(tmp_path, lr=1e6, warmup_iters=0, grad_clip=None, ckpt_interval=1)).fit()
    last = tmp_path / "checkpoints" / "last.pt"
    if last.is_file():  # whatever was written holds finite numbers only, and the message names its step
        state = ckpt_io.load_training_state(last)
        assert not ckpt_io.tensors_finite(state["model"])
        assert f"holds step {state['step']}" in str(err.value)
    else:
        assert "No checkpoint was written yet" in str(err.value)


def test_resume_rewinds_the_log_so_the_curve_never_loops_back(tmp_path, monkeypatch, capsys):
    # steps 1..5 logged, last.pt holds step 2 (saved by ckpt_interval), then a hard stop at step 5 without a save
    # (as after kill -9)
    interrupt_at(monkeypatch, 5)
    real_save = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: real_save(self) if self.step <= 2 else True)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path, ckpt_interval=2)).fit()
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    Trainer(tiny_cfg(tmp_path, ckpt_interval=2)).fit()
    assert "3 log records after step 2 are dropped" in capsys.readouterr().out
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_restart_from_step_0_says_why(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n")
    Trainer(tiny_cfg(tmp_path, iters=1))
    out = capsys.readouterr().out
    assert "starting from step 0" in out and "no checkpoint was written there yet" in out
    assert read_log(tmp_path) == []  # the orphan step record is not kept beside the new run's


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact_under_each_precision(tmp_path, monkeypatch, precision):
    """Whatever precision=auto resolves to on a machine, an interrupted run resumes onto the same numbers."""
    Trainer(tiny_cfg(tmp_path / "a", iters=4, precision=precision)).fit()
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path / "b", iters=4, precision=precision)).fit()
    monkeypatch.undo()
    Trainer(tiny_cfg(tmp_path / "b", iters=4, precision=precision)).fit()
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    assert a[0]["loss"] > 0 and read_log(tmp_path / "a", "start")[0]["precision"].startswith(precision)


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_follows_the_cpu(monkeypatch, native):
    """auto = bf16 autocast where the CPU runs bf16 natively, fp32 where it would be emulated: both resolutions
    are exercised here whatever this machine has."""
    from attnseg.engine import precision as P
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    prec = P.Precision.resolve(torch.device("cpu"), "auto")
    assert prec.dtype == (torch.bfloat16 if native else None)


def test_budget_rule_command_line_wins(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("time_budget: 30\niters: 100\n")
    notes = []
    cfg = load_config(p, ["iters=5000"], notes)
    assert cfg.iters == 5000 and cfg.time_budget is None and "overrides the config file's time_budget=30" in notes[0]
    notes = []
    cfg = load_config(p, [], notes)
    assert cfg.time_budget == 30 and "30 min from the config file" in notes[0] and "iters is ignored" in notes[0]
    q = tmp_path / "steps.yaml"
    q.write_text("iters: 100\n")
    cfg = load_config(q, ["time_budget=2"])
    assert cfg.time_budget == 2
    with pytest.raises(ValueError, match="both given on the command line"):
        load_config(q, ["time_budget=2", "iters=5"])


def test_config_values_take_their_field_types(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("lr: 1e-3\niters: 1e3\ncrop: 90x120\nflip: 'no'\ntest_scale: null\n")
    cfg = load_config(p, ["weight_decay=5e-4", "eval_scales=[1, 0.5]"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.iters == 1000 and isinstance(cfg.iters, int)
    assert cfg.crop == (90, 120) and cfg.flip is False and cfg.weight_decay == 5e-4
    assert cfg.eval_scales == (1.0, 0.5) and all(isinstance(v, float) for v in cfg.eval_scales)
    assert TrainConfig(lr="2e-3").lr == 0.002  # the Python API converts too


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


def test_rerunning_a_finished_run_keeps_one_final_validation(tmp_path):
    """Killed after the final last.pt but before model.safetensors (or simply run again): the resumed run validates
    once more, and the log keeps one final val record, not two."""
    Trainer(tiny_cfg(tmp_path, iters=2)).fit()
    (tmp_path / "checkpoints" / "model.safetensors").unlink()
    Trainer(tiny_cfg(tmp_path, iters=2)).fit()
    assert [r["step"] for r in read_log(tmp_path, "val")] == [2]
    assert (tmp_path / "checkpoints" / "model.safetensors").is_file()
