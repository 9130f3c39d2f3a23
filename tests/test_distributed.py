"""torchrun with 2 CPU processes (gloo) follows the same loss trajectory as 1 process over the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnseg.nn.sync_batchnorm import DistributedBatchNorm2d, convert_batchnorm

ARGS = ["model=fcn8s_resnet18", "data=synthetic:train=8,val=2,size=32x48", "crop=[32,48]", "scale_range=[1.0,1.5]",
        "iters=4", "warmup_iters=1", "val_interval=0", "ckpt_interval=0", "log_interval=1", "workers=0",
        "progress=false", "deterministic=true", "model_kwargs.dropout=0.0"]
# precision is explicit: with precision=auto a CPU with native bf16 (AVX512-BF16, AMX) trains in bf16, where
# 2 x 2 and 1 x 4 images agree only to bf16 rounding (seen: rel 1e-3 after 4 steps)


def losses(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.parametrize("precision,rel", [("fp32", 1e-4), ("bf16", 3e-2)])
def test_two_processes_match_one(tmp_path, precision, rel):
    """fp32: the same trajectory to 1e-4. bf16 autocast (emulated on AVX2, native on AVX512-BF16/AMX): the same
    to bf16's rounding, which differs between a batch of 4 and two of 2 (a wrong all-reduce is off by far more)."""
    args = [*ARGS, f"precision={precision}"]
    port = {"fp32": "29533", "bf16": "29534"}[precision]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m",
         "attnseg", "train", *args, f"run_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path)
    run([sys.executable, "-m", "attnseg", "train", *args, f"run_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=rel)
    start = [json.loads(line) for line in open(tmp_path / "one" / "log.jsonl")][0]
    assert start["precision"].startswith(precision)


def test_convert_batchnorm_shares_parameters_and_is_bn_alone():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ref.load_state_dict(m.state_dict())
    bn_weight = m[1].weight
    conv = convert_batchnorm(m, cuda=False)
    assert isinstance(conv[1], DistributedBatchNorm2d) and conv[1].weight is bn_weight
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(conv(x), ref(x), atol=1e-6)  # no process group: plain batch norm
    assert torch.allclose(conv[1].running_mean, ref[1].running_mean)


def test_instance_model_two_processes_match_one(tmp_path):
    """The instance path under torchrun: the model's own loss over 2 x 2 images follows 1 x 4 (fp32), and the
    final validation gathers every rank's images into the same metrics."""
    args = ["model=unet_watershed_w16", "model_kwargs={width: 8, depth: 2}", "data=nuclei:n=8,size=48x48,count=2-6",
            "crop=[48,48]", "scale_range=[1.0,1.0]", "iters=3", "warmup_iters=1", "val_interval=0", "ckpt_interval=0",
            "log_interval=1", "workers=0", "progress=false", "deterministic=true", "precision=fp32", "jitter=false"]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29535", "-m",
         "attnseg", "train", *args, f"run_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path)
    run([sys.executable, "-m", "attnseg", "train", *args, f"run_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(one) == len(two) == 3 and two == pytest.approx(one, rel=1e-4)
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["images"] == m2["images"] == 8
    for key in ("DSB", "SBD", "|DiC|", "fgDice"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-3), key


def test_classifier_two_processes_match_one(tmp_path):
    """The classification path under torchrun: the DRAW-read classifier's loss over 2 x 2 images follows 1 x 4
    (fp32), and the final validation sums every rank's confusion matrix into the same accuracy."""
    pytest.importorskip("sklearn")
    args = ["model=draw_read", "model_kwargs={glimpses: 2, read_size: 6, image_size: 60}",
            "data=digits:task=translated,train=16,val=10", "iters=3", "warmup_iters=1", "val_interval=0",
            "ckpt_interval=0", "log_interval=1", "workers=0", "progress=false", "deterministic=true",
            "precision=fp32"]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29536", "-m",
         "attnseg", "train", *args, f"run_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path)
    run([sys.executable, "-m", "attnseg", "train", *args, f"run_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(one) == len(two) == 3 and two == pytest.approx(one, rel=1e-4)
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["samples"] == m2["samples"] == 10 and m1["confusion"] == m2["confusion"]
