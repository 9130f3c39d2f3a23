import os
import sys
from pathlib import Path

import pytest
import torch

# one thread per pytest-xdist worker (make test runs 2 workers on 2 cores; more threads oversubscribe them)
torch.set_num_threads(int(os.environ.get("ATTNSEG_TEST_THREADS", "1" if "PYTEST_XDIST_WORKER" in os.environ else "2")))

REPO = Path(__file__).resolve().parents[1]
SHARED_CAMVID = REPO.parent / "shared" / "data" / "camvid"


@pytest.fixture
def camvid_root():
    if not SHARED_CAMVID.is_dir():
        pytest.skip(f"real CamVid not found at {SHARED_CAMVID}")
    return SHARED_CAMVID


def python_exe() -> str:
    return sys.executable


def write_camvid(root: Path, n: int, size=(8, 8), label_fn=None, splits=("train", "val")) -> Path:
    """A CamVid tree in the SegNet layout; ``label_fn(split, i) -> (H, W) uint8`` (default zeros)."""
    import numpy as np
    from PIL import Image
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / split / f"s{i}.png")
            label = np.zeros(size, np.uint8) if label_fn is None else label_fn(split, i)
            Image.fromarray(label).save(root / f"{split}annot" / f"s{i}.png")
    return root


def tiny_checkpoint(folder: Path, model: str = "fcn8s_resnet18", num_classes: int = 3, model_kwargs=None,
                    inference=None, seed: int = 0, metrics=None) -> Path:
    """A run directory holding ``checkpoints/model.safetensors`` of a randomly initialised model, with the
    metadata a training run writes (classes, preprocessing, inference, config); returns the run directory."""
    from attnseg.data.labels import LabelSpec
    from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from attnseg.engine.checkpoint import save_weights
    from attnseg.models import create_model
    torch.manual_seed(seed)
    kwargs = dict(model_kwargs or {})
    net = create_model(model, num_classes=num_classes, **kwargs).eval()
    spec = LabelSpec([f"class{i}" for i in range(num_classes)])
    infer = {"mode": "whole", "crop": None, "stride": None, "scales": [1.0], "flip": False, "test_scale": 1.0}
    infer.update(inference or {})
    meta = {"model": model, "model_kwargs": kwargs, "classes": spec.to_dict(),
            "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "base_scale": 1.0,
                              "test_scale": infer["test_scale"]},
            "inference": infer, "config": {"model": model, "data": "synthetic:", "crop": [32, 48]},
            "num_params": sum(p.numel() for p in net.parameters()), "command": "tests", "step": 0,
            "metrics": metrics or {"mIoU": 0.5, "aAcc": 0.75}}
    save_weights(Path(folder) / "checkpoints" / "model.safetensors", net, meta)
    return Path(folder)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread (a second one only contends with the other test worker for the cores).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny_instance_run(run_dir: Path, data: str = "nuclei:n=8,val=3,size=64x64,count=3-8") -> Path:
    """A watershed U-Net (width 8, depth 2) trained 60 steps on 64x64 nuclei fields, fp32: it finds nuclei."""
    from attnseg.engine.config import TrainConfig
    from attnseg.engine.trainer import train
    train(TrainConfig(model="unet_watershed_w16", model_kwargs={"width": 8, "depth": 2}, data=data, crop=(48, 48),
                      batch_size=2, iters=60, lr=3e-3, warmup_iters=5, val_interval=0, workers=0, progress=False,
                      run_dir=str(run_dir), precision="fp32"))
    return run_dir
