"""Bad config values, on the command line and in YAML files: each stops `attnseg train` before any work (exit 2,
no run directory created), naming the key, the value and what is expected."""

from pathlib import Path

import pytest

from .conftest import expect_bad

BASE = ["model=fcn8s_resnet18", "data=synthetic:train=4,val=2,size=32x32", "crop=[32,32]", "batch_size=2",
        "iters=1", "val_interval=0", "workers=0", "progress=false"]

CASES = [  # (override, words the message must hold)
    ("batch_size=-2", ["batch_size", "-2", ">= 1"]),        # used to hang forever
    ("batch_size=0", ["batch_size", "0", ">= 1"]),          # used to raise ZeroDivisionError
    ("batch_size=two", ["batch_size", "'two'", "integer"]),
    ("batch_size=2.5", ["batch_size", "2.5", "integer"]),
    ("crop=[0,32]", ["crop", ">= 1 pixel"]),
    ("crop=[-5,32]", ["crop", ">= 1 pixel"]),
    ("crop=[32]", ["crop", "2 numbers"]),
    ("crop=[1,2,3]", ["crop", "2 numbers"]),
    ("crop=32", ["crop", "2 numbers"]),
    ("crop=abc", ["crop", "'abc'", "2 numbers"]),
    ("crop=[a,b]", ["crop", "'a'", "integer"]),
    ("iters=-1", ["iters", "-1", ">= 0"]),
    ("scale_range=[0,1]", ["scale_range", "> 0"]),
    ("scale_range=[-1,2]", ["scale_range", "> 0"]),
    ("scale_range=[2,1]", ["scale_range", "[low, high]"]),
    ("lr=abc", ["lr", "'abc'", "number"]),
    ("lr=-0.1", ["lr", "> 0"]),
    ("lr=[1,", ["lr", "YAML"]),
    ("flip=maybe", ["flip", "'maybe'", "true or false"]),
    ("time_budget=0", ["time_budget", "> 0 minutes"]),
    ("test_scale=0", ["test_scale", "> 0"]),
    ("eval_scales=[1,0]", ["eval_scales", "> 0"]),
    ("eval_stride=[0,0]", ["eval_stride", ">= 1"]),
    ("val_max_images=0", ["val_max_images", ">= 1"]),
    ("workers=-1", ["workers", ">= 0"]),
    ("precision=fp8", ["precision", "'fp8'", "auto, fp32"]),
    ("optimizer=lion", ["optimizer", "adamw, adam, sgd"]),
    ("lr_schedule=cosine", ["lr_schedule", "poly, staircase"]),
    ("grad_clip_value=0", ["grad_clip_value", "> 0"]),
    ("eval_mode=tiles", ["eval_mode", "whole, slide"]),
    ("label_smoothing=1.5", ["label_smoothing", "[0, 1)"]),
    ("device=tpu", ["device", "'tpu'", "cpu"]),
    ("model_kwargs=5", ["model_kwargs", "mapping"]),
    ("model_kwargs.nonsense=1", ["fcn8s_resnet18", "no option nonsense", "model_kwargs"]),
    ("model=fcn9s", ["unknown model 'fcn9s'", "fcn8s_resnet18"]),
    ("lrr=0.1", ["unknown config keys", "lrr", "valid keys"]),
    ("lr", ["'lr' is not key=value"]),
]


@pytest.mark.parametrize("override,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_value_on_the_command_line(run_cli, tmp_path, override, needles):
    run = tmp_path / "run"
    key = override.partition("=")[0]
    base = [b for b in BASE if b.partition("=")[0] != key and not (key == "time_budget" and b.startswith("iters"))]
    res = run_cli("train", *base, override, f"run_dir={run}")
    expect_bad(res, *needles)
    assert not run.exists()  # rejected before anything was written: no run directory


def test_unavailable_cuda_device(run_cli, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_bad(run_cli("train", *BASE, "device=cuda", f"run_dir={tmp_path / 'run'}"), "device=cuda",
               "CUDA is not available", "device=cpu")


def test_exponent_without_a_dot_is_a_float(run_cli, tmp_path):
    """YAML 1.1 reads 1e-3 as a string: it used to crash training with a TypeError at the first lr comparison."""
    from attnseg.engine.config import load_config
    p = tmp_path / "exp.yaml"
    p.write_text("lr: 1e-3\n")
    assert load_config(p, ["weight_decay=1e-4"]).lr == pytest.approx(1e-3)


@pytest.mark.parametrize("text,needles", [
    ("lr: 0.1\n  crop: [1, 2]\n", ["line 2", "column"]),
    ("model: fcn8s_resnet18\ncrop: [180, 240\n", ["line 3"]),
    ("- lr\n- crop\n", ["mapping", "list"]),
    ("lr: 0.1\nlr: [oops\n", ["line 3"]),
    ("batch_size: -4\n", ["batch_size", "-4", ">= 1"]),
    ("iters: 1e3x\n", ["iters", "'1e3x'", "integer"]),
], ids=["bad-indent", "unclosed-list", "not-a-mapping", "unclosed-value", "bad-value", "bad-int"])
def test_bad_yaml_file(run_cli, tmp_path, text, needles):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    res = run_cli("train", str(p), f"run_dir={tmp_path / 'run'}")
    msg = expect_bad(res, *needles)
    if "line" in needles[0]:
        assert str(p) in msg
    assert not (tmp_path / "run").exists()


def test_binary_config_file(run_cli, tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01binary")
    expect_bad(run_cli("train", str(p)), str(p))


def test_missing_config_file(run_cli, tmp_path):
    expect_bad(run_cli("train", str(tmp_path / "nope.yaml")), "nope.yaml", "does not exist", "configs/")


def test_iters_and_time_budget_both_on_the_command_line(run_cli, tmp_path):
    expect_bad(run_cli("train", *BASE, "time_budget=5", f"run_dir={tmp_path / 'run'}"),
               "both given on the command line", "give one")


def test_command_line_iters_beats_the_files_time_budget(run_cli, tmp_path):
    """The README's own `attnseg train configs/camvid_fcn8s_resnet18.yaml iters=5000` used to run 30 minutes."""
    from attnseg.engine.config import load_config
    repo = Path(__file__).resolve().parents[2]
    notes = []
    cfg = load_config(repo / "configs" / "camvid_fcn8s_resnet18.yaml", ["iters=5000"], notes)
    assert cfg.iters == 5000 and cfg.time_budget is None
    assert "budget: 5000 steps" in notes[0] and "time_budget=30" in notes[0]
