import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("ATTNSEG_TEST_THREADS", "2")))

REPO = Path(__file__).resolve().parents[1]
SHARED_CAMVID = REPO.parent / "shared" / "data" / "camvid"


@pytest.fixture
def camvid_root():
    if not SHARED_CAMVID.is_dir():
        pytest.skip(f"real CamVid not found at {SHARED_CAMVID}")
    return SHARED_CAMVID


def python_exe() -> str:
    return sys.executable
