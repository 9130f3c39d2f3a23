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
