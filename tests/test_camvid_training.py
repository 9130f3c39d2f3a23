"""Slow: a short FCN-8s training on the real CamVid (``make test-slow``; skipped without ../shared/data/camvid)."""

import json

import pytest

from attnseg.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.camvid]


def test_short_camvid_training_learns_and_evaluates_consistently(camvid_root, tmp_path):
    run = tmp_path / "run"
    data = f"camvid:{camvid_root}"
    assert main(["train", "model=fcn8s_resnet18", f"data={data}", f"run_dir={run}", "base_scale=0.5",
                 "crop=[180,240]", "batch_size=8", "iters=60", "warmup_iters=10", "lr=0.002",
                 "class_weights=median_freq", "class_weight_power=0.5", "val_interval=0", "log_interval=5",
                 "workers=1", "progress=false"]) == 0
    losses = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["mIoU"] > 0.15  # 11 classes: far above what an untrained net scores (~0.02-0.05)
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--data", data, "--split", "val", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9)
