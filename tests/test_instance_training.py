"""Training instance models through the engine (``TrainConfig`` + ``train``): fp32 and bf16 on any machine, the
files a run writes (instance metrics, per-image rows, checkpoints with the instance metadata, validation records,
pictures), resuming, and the refusals (a model and a dataset of different tasks, mismatched val data, bad tile
settings, a val_metric that is not an instance metric)."""

import csv
import json
import shutil

import numpy as np
import pytest

from attnseg.data import build_dataset
from attnseg.engine.checkpoint import load_model
from attnseg.engine.config import TrainConfig
from attnseg.engine.trainer import train

DATA = "nuclei:n=8,size=64x64,count=3-8"
INSTANCE_KEYS = ("DSB", "SBD", "|DiC|", "DiC", "fgDice", "PQ", "AP", "AP50", "AP75", "MWCov", "MUCov")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(run_dir, **kw) -> TrainConfig:
    base = dict(model="unet_watershed_w16", model_kwargs={"width": 8, "depth": 2}, data=DATA, crop=(48, 48),
                batch_size=2, iters=4, val_interval=2, workers=0, progress=False, run_dir=str(run_dir),
                precision="fp32", log_interval=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4-step run in fp32 and in bf16 (autocast on the CPU: every machine can run it)."""
    root = tmp_path_factory.mktemp("instance_training")
    out = {}
    for precision in ("fp32", "bf16"):
        metrics = train(config(root / precision, precision=precision))
        out[precision] = (root / precision, metrics)
    return out


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_writes_instance_metrics_and_checkpoints(runs, precision):
    run, returned = runs[precision]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "instances" and metrics["step"] == 4 and metrics["images"] == 8
    assert metrics["precision"].startswith(precision) and metrics["model"] == "unet_watershed_w16"
    assert metrics["data"] == DATA and metrics["split"] == "val"
    for k in INSTANCE_KEYS:
        assert k in metrics and k in returned, k
        assert metrics[k] == pytest.approx(returned[k])
    assert 0 <= metrics["DSB"] <= 1 and 0 <= metrics["SBD"] <= 1 and metrics["|DiC|"] >= 0
    assert metrics["|DiC|"] >= abs(metrics["DiC"]) - 1e-9
    for name in ("model.safetensors", "best.safetensors", "last.pt"):
        assert (run / "checkpoints" / name).is_file(), name
    assert (run / "metrics.txt").read_text().startswith("instance metrics (8 images)")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_per_image_rows_count_the_ground_truth(runs, precision):
    run, returned = runs[precision]
    with open(run / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"image", "n_pred", "n_gt", "DSB", "SBD", "|DiC|", "fgDice"} <= set(rows[0])
    val = build_dataset(DATA, "val")
    assert [r["image"] for r in rows] == [val.sample_name(i) for i in range(8)]
    for i, r in enumerate(rows):
        gt = val.load(i)[1]
        assert int(r["n_gt"]) == len(np.unique(gt)) - 1
        assert float(r["|DiC|"]) == abs(int(r["n_pred"]) - int(r["n_gt"]))
    # the summary is the mean of the rows
    assert np.mean([float(r["|DiC|"]) for r in rows]) == pytest.approx(returned["|DiC|"])
    assert np.mean([float(r["DSB"]) for r in rows]) == pytest.approx(returned["DSB"], abs=1e-5)


def test_validation_records_and_pictures(runs):
    run, _ = runs["fp32"]
    log = read_log(run)
    vals = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [2, 4]
    for r in vals:
        assert {"DSB", "SBD", "|DiC|", "AP", "fgDice", "PQ", "images", "mode", "s_per_image"} <= set(r)
        assert r["images"] == 8 and r["mode"] == "whole up to 1024 px, else tiles 512 (overlap 96)"
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all({"loss", "fg", "boundary"} <= set(r) for r in log if r["kind"] == "train")
    from PIL import Image
    pictures = sorted((run / "pictures").glob("*.png"))
    assert [p.stem for p in pictures] == [f"nuclei_val_{i:04d}" for i in range(4)]
    assert Image.open(pictures[0]).size == (3 * 64 + 2 * 4, 64)       # image | ground truth | prediction


def test_the_checkpoint_holds_the_instance_metadata(runs):
    run, _ = runs["fp32"]
    model, meta = load_model(run / "checkpoints" / "model.safetensors")
    assert meta["task"] == "instances" and meta["model"] == "unet_watershed_w16"
    assert meta["classes"]["names"] == ["background", "nucleus"]
    assert meta["inference"] == {"test_scale": 1.0, "max_side": 1024, "tile": 512, "overlap": 96}
    assert meta["model_kwargs"] == {"width": 8, "depth": 2} and meta["step"] == 4
    assert model.task == "instances" and model.net.down[0][0].out_channels == 8
    assert set(meta["metrics"]) >= {"DSB", "SBD", "|DiC|"}


def test_resume_continues_from_the_last_step(runs, tmp_path):
    src, _ = runs["fp32"]
    run = tmp_path / "resumed"
    shutil.copytree(src, run)
    before = read_log(run)
    metrics = train(config(run, iters=6))
    log = read_log(run)
    assert log[:len(before)] == before                                  # the earlier records are kept as they were
    steps = [r["step"] for r in log if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]                                  # continued at 5, nothing repeated
    assert [r["step"] for r in log if r["kind"] == "val"] == [2, 4, 6]
    assert json.loads((run / "metrics.json").read_text())["step"] == 6 and metrics["images"] == 8
    _, meta = load_model(run / "checkpoints" / "model.safetensors")
    assert meta["step"] == 6


def test_a_model_and_a_dataset_of_different_tasks_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model fcn8s_resnet18 predicts semantic but nuclei:n=8,size=64x64,count=3-8 "
                                         r"is a instances dataset"):
        train(config(tmp_path / "a", model="fcn8s_resnet18", model_kwargs={}))
    with pytest.raises(ValueError, match=r"model unet_watershed_w16 predicts instances but synthetic:n=4 is a "
                                         r"semantic dataset"):
        train(config(tmp_path / "b", data="synthetic:n=4"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()   # refused before any file


def test_val_data_of_another_task_or_other_classes_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"train and val datasets must both hold instances of the same classes: "
                                         r"\['nucleus'\] vs a semantic dataset"):
        train(config(tmp_path / "a", val_data="synthetic:n=2,size=32x32"))
    with pytest.raises(ValueError, match=r"same classes: \['nucleus'\] vs \['leaf'\]"):
        train(config(tmp_path / "b", val_data="rosettes:n=2,size=32x32,count=5-6"))


def test_a_training_split_without_instances_is_refused(tmp_path):
    from PIL import Image
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    for name in ("x", "y"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(root / "instances" / f"{name}.png")
    from attnseg.data.io import DataError
    with pytest.raises(DataError, match=r"none of its 2 instance maps holds an instance"):
        train(config(tmp_path / "run", data=f"instances:{root}", train_split="all", val_split="all", crop=(32, 32)))


@pytest.mark.parametrize("key, value, needle", [
    ("tile_size", 8, "tile_size.*it must be >= 16 pixels"),
    ("tile_overlap", 512, r"tile_overlap.*it must be in \[0, tile_size\)"),
    ("tile_overlap", -1, r"tile_overlap.*it must be in \[0, tile_size\)"),
    ("tile_max_side", 256, "tile_max_side.*it must be >= tile_size"),
])
def test_bad_tile_settings_are_refused(tmp_path, key, value, needle):
    from attnseg.engine.config import validate
    with pytest.raises(ValueError, match=needle):
        validate(config(tmp_path, **{key: value}))


def test_tile_settings_and_val_metric_reach_the_run(tmp_path):
    run = tmp_path / "tiles"
    train(config(run, iters=2, val_interval=0, tile_max_side=48, tile_size=32, tile_overlap=8, val_metric="|DiC|"))
    _, meta = load_model(run / "checkpoints" / "best.safetensors")
    assert meta["inference"] == {"test_scale": 1.0, "max_side": 48, "tile": 32, "overlap": 8}
    log = read_log(run)
    assert [r["mode"] for r in log if r["kind"] == "val"] == ["whole up to 48 px, else tiles 32 (overlap 8)"]


def test_a_val_metric_that_is_not_an_instance_metric_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"val_metric 'mIoU' is not an instance metric; choose one of .*DSB"):
        train(config(tmp_path / "m", iters=1, val_interval=0, val_metric="mIoU"))


def test_a_bad_val_metric_is_refused_before_training(tmp_path):
    from attnseg.engine.trainer import Trainer
    with pytest.raises(ValueError, match="val_metric 'mIoU' is not an instance metric"):
        Trainer(config(tmp_path / "m", val_metric="mIoU"))


def test_a_semantic_run_refuses_a_val_metric_it_does_not_compute(tmp_path):
    from attnseg.engine.trainer import Trainer
    with pytest.raises(ValueError, match="val_metric"):
        Trainer(config(tmp_path / "s", model="fcn8s_resnet18", model_kwargs={}, data="synthetic:n=2,size=32x32",
                       crop=(32, 32), val_metric="DSB"))


def test_the_discriminative_model_trains_and_logs_its_loss_parts(tmp_path):
    run = tmp_path / "disc"
    metrics = train(config(run, model="unet_discriminative_w16", iters=2, val_interval=0,
                           data="nuclei:n=4,size=64x64,count=3-8"))
    log = read_log(run)
    trains = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [1, 2]
    assert all({"loss", "fg", "embedding", "var", "dist", "reg"} <= set(r) for r in trains)
    assert all(np.isfinite(r["loss"]) for r in trains)
    assert metrics["images"] == 4 and "DSB" in metrics
    _, meta = load_model(run / "checkpoints" / "model.safetensors")
    assert meta["task"] == "instances" and meta["model"] == "unet_discriminative_w16"
