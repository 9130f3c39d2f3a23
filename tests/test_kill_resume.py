"""kill -9 at three points of a training run: the same command resumes and ends on weights bit-identical to an
uninterrupted run (issue 11). Real processes, real SIGKILL: nothing is saved on the way out, so this checks that
every write is atomic, that a cut log is rewound and that a resume replays exactly the batches it would have seen."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnseg.engine import checkpoint as ckpt_io

ARGS = ["model=fcn8s_resnet18", "data=synthetic:train=8,val=2,size=32x48", "crop=[32,48]", "batch_size=2",
        "iters=12", "warmup_iters=2", "val_interval=0", "ckpt_interval=1", "log_interval=1", "workers=0",
        "progress=false", "deterministic=true", "precision=fp32", "cache=true"]


def command(run_dir):
    return [sys.executable, "-m", "attnseg", "train", *ARGS, f"run_dir={run_dir}"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def steps_logged(run_dir) -> int:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train":
            steps.append(rec["step"])
    return max(steps)


def kill_after(run_dir, step: int, extra_delay: float) -> None:
    """Start the command, wait until step ``step`` is logged (+ ``extra_delay`` s, to land inside a save or a
    step), then SIGKILL it."""
    p = subprocess.Popen(command(run_dir), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while steps_logged(run_dir) < step:
        assert p.poll() is None, f"training ended before step {step}: {p.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "training did not reach the kill point in 300 s"
        time.sleep(0.02)
    time.sleep(extra_delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()


@pytest.mark.slow
def test_kill9_at_three_points_resumes_to_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(straight), env=env(), check=True, capture_output=True, timeout=600)
    for step, delay in ((2, 0.0), (5, 0.05), (9, 0.15)):  # right after a log line, then inside a step or a save
        kill_after(killed, step, delay)
    done = subprocess.run(command(killed), env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    a = ckpt_io.read_checkpoint(straight / "checkpoints" / "model.safetensors")[0]
    b = ckpt_io.read_checkpoint(killed / "checkpoints" / "model.safetensors")[0]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 13))  # no step twice, none missing
    assert not list((killed / "checkpoints").glob("*.tmp"))
