"""Ren & Zemel's curriculum through the common engine: box pre-training, then the full model from its weights
(``init_from``), as two configs of one ``attnseg train`` command; Adam with the staircase schedule and
element-wise clipping; resume; prediction from the run; and the refusals (an ``init_from`` that fits nothing,
``run_dir`` for several stages, bad schedule keys)."""

import json

import pytest
import torch
import yaml

from attnseg.cli import main
from attnseg.engine.checkpoint import load_model
from attnseg.engine.config import ConfigError, TrainConfig
from attnseg.engine.trainer import lr_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = "rosettes:n=6,size=64x64,count=3-5"
COMMON = {"model": "recurrent_attention", "data": DATA, "crop": [64, 64], "scale_range": [1.0, 1.0],
          "batch_size": 2, "iters": 3, "optimizer": "adam", "adam_eps": 1e-7, "lr": 1e-3, "lr_schedule": "staircase",
          "lr_decay": 0.5, "lr_decay_steps": 2, "warmup_iters": 0, "grad_clip": None, "grad_clip_value": 1.0,
          "workers": 0, "val_interval": 0, "val_max_images": 2, "progress": False, "precision": "fp32",
          "log_interval": 1, "val_metric": "SBD"}
KW = {"image_size": [64, 64], "steps": 3, "filter_size": 16, "pad_min": 4}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("recattend")
    box, full = root / "box", root / "full"
    files = []
    for name, run, extra in (("box", box, {"model_kwargs": {**KW, "phase": "box"}}),
                             ("full", full, {"model_kwargs": {**KW, "segm_knob_offset": 1, "knob_decay": 1},
                                             "init_from": str(box)})):
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**COMMON, **extra, "run_dir": str(run)}))
        files.append(str(path))
    assert main(["train", *files]) == 0
    return box, full


def records(run, kind="train"):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_box_stage_then_full_stage(stages, capsys):
    box, full = stages
    box_rec, full_rec = records(box), records(full)
    assert set(box_rec[-1]) >= {"box", "score"} and "segm" not in box_rec[-1]
    assert {"box", "score", "segm"} <= set(full_rec[-1])
    assert [r["lr"] for r in full_rec] == pytest.approx([1e-3, 1e-3, 5e-4])     # staircase: × 0.5 every 2 steps
    # the full stage started from the box stage's box network; the decoder is new
    b, _ = load_model(box)
    f0 = torch.load(full / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert f0["box.head.weight"].shape == b.box.head.weight.shape
    assert (full / "metrics.json").is_file()


def test_init_from_reports_what_it_loaded(tmp_path, stages, capsys):
    box, _ = stages
    # without skips the decoder's input widths differ: those tensors keep their initialisation
    cfg = TrainConfig(**{**COMMON, "iters": 1, "model_kwargs": {**KW, "skip_connections": False},
                         "init_from": str(box), "run_dir": str(tmp_path / "r")})
    from attnseg.engine.trainer import Trainer
    tr = Trainer(cfg)
    out = capsys.readouterr().out
    assert "tensors loaded" in out and "start fresh" in out and "decoder." in out
    b, _ = load_model(box)
    assert torch.equal(tr.model.box.head.weight.detach().cpu(), b.box.head.weight.detach().cpu())


def test_predict_from_the_run_with_attention(stages, tmp_path):
    _, full = stages
    from PIL import Image

    from attnseg.data.synthetic_instances import leaf_rosette
    img, _ = leaf_rosette(3, (64, 64), (3, 5))
    Image.fromarray(img).save(tmp_path / "plant.png")
    out = tmp_path / "out"
    assert main(["predict", str(full), str(tmp_path / "plant.png"), "--out", str(out), "--attention"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert any(n.endswith("_steps.png") for n in names) and any(n.endswith("_steps.gif") for n in names)
    gif = Image.open(next(out.glob("*_steps.gif")))
    assert gif.n_frames >= 1


def test_init_from_a_model_that_shares_nothing(tmp_path, stages):
    other = tmp_path / "other.yaml"
    run = tmp_path / "ws"
    other.write_text(yaml.safe_dump({**COMMON, "model": "unet_watershed_w16", "model_kwargs": {"width": 4, "depth": 1},
                                     "optimizer": "adamw", "iters": 1, "run_dir": str(run)}))
    assert main(["train", str(other)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**COMMON, "model_kwargs": KW, "init_from": str(run),
                                   "run_dir": str(tmp_path / "bad")}))
    with pytest.raises(ValueError, match="none of its .* tensors fits recurrent_attention"):
        from attnseg.engine.config import load_config
        from attnseg.engine.trainer import Trainer
        Trainer(load_config(str(bad)))


def test_run_dir_cannot_be_given_for_several_stages(tmp_path, capsys):
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump({**COMMON, "run_dir": str(tmp_path / "a")}))
    assert main(["train", str(a), str(a), "run_dir=runs/x"]) == 2
    assert "run_dir= cannot be given for several stages" in capsys.readouterr().err


def test_staircase_and_poly_schedules():
    cfg = TrainConfig(lr=1e-3, lr_schedule="staircase", lr_decay=0.8, lr_decay_steps=5000, warmup_iters=0)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 4999, 0.5) == pytest.approx(1e-3)
    assert lr_at(cfg, 12000, 0.9) == pytest.approx(1e-3 * 0.8 ** 2)
    poly = TrainConfig(lr=1e-3, warmup_iters=0, min_lr=0.0, poly_power=1.0)
    assert lr_at(poly, 10, 0.5) == pytest.approx(5e-4)


@pytest.mark.parametrize("key, value, message", [
    ("lr_schedule", "cosine", "choose one of poly, staircase"),
    ("lr_decay", 0.0, "in (0, 1]"),
    ("lr_decay_steps", 0, ">= 1 step"),
    ("grad_clip_value", -1.0, "finite number > 0"),
    ("adam_eps", 0.0, "it must be > 0"),
    ("optimizer", "lamb", "choose one of adamw, adam, sgd"),
])
def test_bad_schedule_keys(key, value, message):
    from attnseg.engine.config import validate
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate(TrainConfig(**{key: value}))


def test_elementwise_clipping_bounds_every_gradient(tmp_path, monkeypatch):
    """grad_clip_value: every gradient element within [-v, v] when the optimiser steps."""
    from attnseg.engine.trainer import Trainer
    cfg = TrainConfig(**{**COMMON, "model_kwargs": KW, "iters": 1, "grad_clip_value": 1e-4,
                         "run_dir": str(tmp_path / "clip")})
    tr = Trainer(cfg)
    seen = []
    step = tr.optimizer.step

    def record(*a, **k):
        seen.append(max(p.grad.abs().max().item() for p in tr.model.parameters() if p.grad is not None))
        return step(*a, **k)
    monkeypatch.setattr(tr.optimizer, "step", record)
    tr.train_step(next(iter(tr.loader())))
    assert seen and seen[0] <= 1e-4 + 1e-12


def test_web_page_answer_carries_the_step_strip_and_gif(stages):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    import attnseg
    from attnseg.data.synthetic_instances import leaf_rosette
    from attnseg.serve.app import create_app
    _, full = stages
    img, _ = leaf_rosette(4, (64, 64), (3, 5))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    with TestClient(create_app({"ra": attnseg.load(full, precision="fp32")})) as client:
        r = client.post("/api/predict", files={"image": ("plant.png", buf.getvalue(), "image/png")},
                        data={"model": "ra"})
    assert r.status_code == 200, r.text
    pics = {p["name"]: p for p in r.json()["attention"]["pictures"]}
    assert "gif" in pics["steps"] and "gif" not in pics["instance_colours"]
    gif = Image.open(io.BytesIO(base64.b64decode(pics["steps"]["gif"])))
    assert gif.format == "GIF" and gif.n_frames >= 2


@pytest.mark.slow
def test_onnx_export_of_the_unrolled_steps_predicts_the_torch_ids(stages, tmp_path):
    """The T unrolled steps export (masks and scores as one tensor); the ONNX predictor groups them like PyTorch.
    Slow: the export takes about a minute per step on one core."""
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    import numpy as np

    import attnseg
    from attnseg.data.synthetic_instances import leaf_rosette
    _, full = stages
    out = tmp_path / "ra.onnx"
    assert main(["export", str(full), "--out", str(out)]) == 0
    onnx, torch_p = attnseg.load(out), attnseg.load(full, precision="fp32")
    for seed in (5, 6):
        im = leaf_rosette(seed, (64, 64), (3, 5))[0]
        a, b = onnx.predict(im), torch_p.predict(im)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert a.scores.keys() == b.scores.keys()
        assert all(abs(a.scores[k] - b.scores[k]) < 1e-4 for k in a.scores)


@pytest.mark.parametrize("phase", ["box", "full"])
def test_both_phases_train_under_bf16(tmp_path, phase):
    """bf16 autocast through the engine (what precision=auto picks on AVX512-BF16 / AMX machines; emulated
    elsewhere): finite losses, and a validation at the end; the module fixture covers fp32."""
    import math

    from attnseg.engine.trainer import train
    metrics = train(TrainConfig(**{**COMMON, "precision": "bf16", "iters": 2,
                                   "model_kwargs": {**KW, "phase": phase}, "run_dir": str(tmp_path / phase)}))
    start = [r for r in map(json.loads, (tmp_path / phase / "log.jsonl").read_text().splitlines())
             if r["kind"] == "start"][0]
    assert start["precision"].startswith("bf16")
    losses = [r["loss"] for r in records(tmp_path / phase)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert 0 <= metrics["SBD"] <= 1
