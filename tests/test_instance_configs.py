"""The instance configs train with one command: the CVPPP ones on data written in the CVPPP 2017 LSC layout (the
data itself cannot be shipped), the DSB2018 ones on the real data where ../shared/data holds it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnseg.data.synthetic_instances import leaf_rosette
from attnseg.engine.config import load_config
from attnseg.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018_stage1_train"


def write_cvppp_rosettes(root: Path, n: int = 6, size=(120, 128)) -> Path:
    """Synthetic rosettes saved as CVPPP A1: RGBA images, palette label maps, the csv of leaf counts, splits."""
    folder = root / "A1"
    folder.mkdir(parents=True)
    lines, names = [], []
    for p in range(1, n + 1):
        image, ids = leaf_rosette(p, size, (3, 6))
        rgba = np.concatenate([image, np.full((*size, 1), 255, np.uint8)], 2)
        Image.fromarray(rgba, mode="RGBA").save(folder / f"plant{p:03d}_rgb.png")
        lab = Image.fromarray(ids.astype(np.uint8), mode="P")
        lab.putpalette(list(np.random.default_rng(p).integers(0, 255, 768)))
        lab.save(folder / f"plant{p:03d}_label.png")
        lines.append(f"plant{p:03d}_rgb.png, {len(np.unique(ids)) - 1}")
        names.append(f"plant{p:03d}")
    (folder / "A1.csv").write_text("\n".join(lines) + "\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(names[4:]) + "\n")
    return root


@pytest.mark.parametrize("name", ["cvppp_unet_watershed_224.yaml", "cvppp_unet_discriminative_448.yaml"])
def test_cvppp_config_trains_on_the_release_layout(tmp_path, name):
    root = write_cvppp_rosettes(tmp_path / "lsc")
    cfg = load_config(REPO / "configs" / name, [f"data=cvppp:{root}", f"run_dir={tmp_path / 'run'}", "time_budget=null",
                                                "iters=2", "batch_size=2", "val_interval=0", "progress=false",
                                                "model_kwargs={width: 8, depth: 2}", "precision=fp32"])
    assert cfg.flip and cfg.val_metric == "SBD"
    trainer = Trainer(cfg)
    assert len(trainer.train_set) == 4 and len(trainer.val_set) == 2
    item = trainer.train_set[0]
    assert tuple(item["image"].shape[-2:]) == tuple(cfg.crop)          # 224 or 448 input
    metrics = trainer.fit()
    assert metrics["images"] == 2 and 0 <= metrics["SBD"] <= 1
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "pictures").is_dir()


@pytest.mark.skipif(not DSB.is_dir(), reason="../shared/data/dsb2018_stage1_train is absent")
def test_dsb2018_config_reads_the_real_splits(tmp_path):
    cfg = load_config(REPO / "configs" / "dsb2018_unet_watershed.yaml", [f"run_dir={tmp_path / 'run'}"])
    from attnseg.data import build_dataset
    train, val = build_dataset(cfg.data, cfg.train_split), build_dataset(cfg.data, cfg.val_split)
    assert (len(train), len(val)) == (565, 99)
    assert not {train.sample_name(i) for i in range(len(train))} & {val.sample_name(i) for i in range(len(val))}
