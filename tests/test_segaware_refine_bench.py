"""benchmarks/segaware_refine.py end to end on a tiny synthetic run: embedding training, tuning, held-out table."""

import importlib.util
from pathlib import Path

import torch

from attnseg.cli import main as cli
from attnseg.data import build_dataset
from attnseg.data.transforms import eval_transforms
from attnseg.engine.checkpoint import load_model
from attnseg.engine.inference import InferenceConfig, infer
from attnseg.metrics.segmentation import ConfusionMatrix

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "segaware_refine.py"
_spec = importlib.util.spec_from_file_location("segaware_refine_bench", SCRIPT)
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)

DATA = "synthetic:train=8,val=4,size=32x48"


def test_tiny_run(tmp_path):
    base = tmp_path / "base"
    assert cli(["train", "model=fcn8s_resnet18", f"data={DATA}", "crop=[32,48]", "batch_size=4", "iters=2",
                "warmup_iters=1", "val_interval=0", "workers=0", "progress=false", f"run_dir={base}"]) == 0
    doc = sr.main(["--base-run", str(base), "--run-root", str(tmp_path / "bench"), "--iters", "2", "--batch-size",
                   "2", "--crop", "32,48", "--tune-images", "2", "--quick-grid", "--timing-images", "1",
                   "--workers", "0"])
    kinds = {"none", "filter", "crf"} | ({"densecrf"} if "densecrf" not in doc["skipped"] else set())
    assert set(doc["results"]) == kinds
    assert doc["val_images"] == {"tune": 2, "held_out": 2}
    for r in doc["results"].values():
        m = r["held_out"]
        assert 0 <= m["miou"] <= 1 and 0 <= m["trimap3_miou"] <= 1 and m["seconds_per_image"] >= 0
    # "none" is the base network through the engine's own inference on the held-out images
    model, _ = load_model(base / "checkpoints" / "model.safetensors")
    val = build_dataset(DATA, "val", transform=eval_transforms())
    cm = ConfusionMatrix(val.spec.num_classes, val.spec.ignore_index)
    for i in (2, 3):
        item = val[i]
        with torch.no_grad():
            cm.update(infer(model, item["image"][None], InferenceConfig(), val.spec.num_classes).argmax(1)[0],
                      item["label"])
    assert abs(doc["results"]["none"]["held_out"]["miou"] - cm.compute()["mIoU"]) < 1e-9
    # the refiner's checkpoint holds its base: it loads without the base run's weights file
    (base / "checkpoints" / "model.safetensors").rename(tmp_path / "moved.safetensors")
    refiner, meta = load_model(tmp_path / "bench" / "embedding" / "checkpoints" / "model.safetensors")
    assert meta["model_kwargs"]["base_weights"].endswith("model.safetensors")
    x = val[0]["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(refiner.base(x)["logits"], model(x)["logits"])
