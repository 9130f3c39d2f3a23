"""The attnseg command end to end on tiny synthetic data: train, eval, predict, models, data check, data
coco-shapes, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from attnseg.cli import main
from attnseg.data import build_dataset, read_label

from .conftest import write_camvid

DATA = "synthetic:train=8,val=3,size=32x48"
TRAIN = ["train", "model=fcn8s_resnet18", f"data={DATA}", "crop=[32,48]", "batch_size=4", "iters=2", "warmup_iters=1",
         "val_interval=0", "log_interval=1", "workers=0", "progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(TRAIN + [f"run_dir={run}"]) == 0
    return run


def test_train_writes_resolved_config(run_dir):
    text = (run_dir / "config.yaml").read_text()
    assert "iters: 2" in text and "model: fcn8s_resnet18" in text


def test_eval_matches_training_validation(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--data", DATA, "--split", "val", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Class" in printed and "IoU" in printed and "aAcc" in printed
    evaluated = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert evaluated["mIoU"] == pytest.approx(trained["mIoU"])  # one inference path for both


def test_eval_slide_and_tta_run(run_dir, tmp_path):
    assert main(["eval", str(run_dir), "--data", DATA, "--mode", "slide", "--crop", "24,32",
                 "--tta", "scales=0.75,1", "flip=true", "--out", str(tmp_path)]) == 0
    assert "slide" in json.loads((tmp_path / "metrics.json").read_text())["inference"]


def test_predict_writes_ids_and_overlay(run_dir, tmp_path, capsys):
    ds = build_dataset(DATA, "val")
    image, _ = ds.load(0)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "pred"
    assert main(["predict", str(run_dir), str(src), "--out", str(out), "--attention"]) == 0
    ids = read_label(out / "in_ids.png")
    assert ids.shape == image.shape[:2] and ids.max() < ds.spec.num_classes
    assert np.asarray(Image.open(out / "in_overlay.png")).shape == image.shape
    assert "no attention maps" in capsys.readouterr().out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn8s_resnet18" in out and "deconvnet_vgg16" in out


def test_data_check_reports_problems(tmp_path, capsys):
    root = write_camvid(tmp_path / "cv", 2, label_fn=lambda split, i: np.full((8, 8), 3 if i else 40, np.uint8))
    (root / "val" / "s1.png").write_bytes(b"not an image")
    assert main(["data", "check", f"camvid:{root}"]) == 1
    out = capsys.readouterr().out
    assert "s0.png" in out and "val/s1.png" in out and "Road" in out


def test_data_coco_shapes_writes_a_set_the_printed_strings_read(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    out = tmp_path / "shapes"
    assert main(["data", "coco-shapes", str(out), "--train", "3", "--val", "2", "--seed", "4", "--size", "40x48"]) == 0
    printed = capsys.readouterr().out
    train, val = f"coco:{out}/train.json,{out}/images", f"coco:{out}/val.json,{out}/images"
    assert f"data={train} val_data={val}" in printed
    assert "wrote 3 train scenes" in printed and "2 val scenes" in printed and "1 disc, 2 square, 3 triangle" in printed
    a, b = build_dataset(train, "train"), build_dataset(val, "val")
    assert (len(a), len(b)) == (3, 2) and a.class_names == ["disc", "square", "triangle"]
    assert a.load(0)[0].shape == (40, 48, 3)
    assert np.array_equal(a.load(1)[1], build_dataset("shapes:n=3,size=40x48,seed=4", "train").load(1)[1])
    # the defaults: 192x192; a second run rewrites the set
    assert main(["data", "coco-shapes", str(out), "--train", "1", "--val", "1"]) == 0
    capsys.readouterr()
    assert build_dataset(train, "train").load(0)[0].shape == (192, 192, 3) and len(build_dataset(train)) == 1


@pytest.mark.parametrize("args, needle", [
    (["--size", "big"], "argument --size: takes HxW, the image height and width in px, each at least 32"),
    (["--size", "16x64"], "argument --size: takes HxW"),
    (["--train", "0"], "argument --train: takes a number > 0"),
    (["--val", "x"], "argument --val: takes a number > 0"),
])
def test_data_coco_shapes_refuses_bad_arguments(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        main(["data", "coco-shapes", str(tmp_path / "s")] + args)
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_data_coco_shapes_reports_an_unwritable_folder_in_one_line(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    (tmp_path / "file").write_text("x")
    assert main(["data", "coco-shapes", str(tmp_path / "file" / "s"), "--train", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnseg: error: coco shapes: cannot write ") and "choose a folder you can write" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["data", "coco-shapes", str(tmp_path / "a,b")]) == 2
    assert "holds a comma" in capsys.readouterr().err
    import os
    if os.geteuid() != 0:                                   # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["data", "coco-shapes", str(locked / "s"), "--train", "1", "--val", "1"]) == 2
        assert "Permission denied" in capsys.readouterr().err


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "model=nope", f"data={DATA}", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "fcn8s_resnet18" in err
    assert main(["eval", str(tmp_path / "missing"), "--data", DATA]) == 2
    assert main(["train", "lrr=3"]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out.resolve()}" in printed
    assert (out / "metrics.txt").is_file() and list((out / "pictures").glob("*.png"))
    assert (out / "checkpoints" / "model.safetensors").is_file()


def test_predict_attention_of_a_multiscale_model(tmp_path, capsys):
    """Train 1 step of attention to scale through the CLI (model_kwargs from the command line), then predict
    with --attention: per-scale weight maps, per-scale predictions and the figure."""
    run = tmp_path / "ms"
    args = [a for a in TRAIN if not a.startswith(("model=", "iters="))]
    assert main(args + ["model=attention_to_scale", "model_kwargs.scales=[1,0.5]", "model_kwargs.head_channels=8",
                        "iters=1", f"run_dir={run}"]) == 0
    image, _ = build_dataset(DATA, "val").load(0)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(src), "--out", str(out), "--attention"]) == 0
    for name in ("attn_scale_1", "attn_scale_0.5", "pred_scale_1", "pred_scale_0.5"):
        assert np.asarray(Image.open(out / f"in_{name}.png")).shape == image.shape
    fig = Image.open(out / "in_scales.png")
    assert fig.width >= 2 * image.shape[1] and fig.height >= 3 * image.shape[0]
    assert "attn_scale_0.5" in capsys.readouterr().out


def test_predict_attention_of_a_query_pixel(tmp_path, capsys):
    """Train a tiny criss-cross FLANet-family model 2 steps through the CLI, then predict with --attention and two
    --query pixels: a figure per query and each spatial map; without --query, the image centre; bad queries fail."""
    run = tmp_path / "cc"
    args = [a for a in TRAIN if not a.startswith("model=")]
    assert main(args + ["model=dilated_resnet18_ccnet", "model_kwargs.channels=16", "model_kwargs.mid_channels=16",
                        f"run_dir={run}"]) == 0
    image, _ = build_dataset(DATA, "val").load(0)                     # 32x48: a 4x6 feature grid
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(src), "--out", str(out), "--attention", "--query", "5,7",
                 "--query", "31,47"]) == 0
    printed = capsys.readouterr().out
    for y, x in ((5, 7), (31, 47)):
        fig = Image.open(out / f"in_query_{y}_{x}.png")
        assert fig.width >= 3 * image.shape[1] and fig.height >= image.shape[0]   # image, cross, composed
        for name in ("criss_cross_r1", "criss_cross_composed"):
            assert np.asarray(Image.open(out / f"in_attn_{name}_q{y}_{x}.png")).shape == image.shape
        assert f"in_query_{y}_{x}.png" in printed
    assert not (out / "in_attn_grid.png").exists() and not (out / "in_attn_criss_cross.png").exists()

    assert main(["predict", str(run), str(src), "--out", str(out), "--attention"]) == 0
    assert "image centre (16, 24)" in capsys.readouterr().out and (out / "in_query_16_24.png").is_file()

    assert main(["predict", str(run), str(src), "--out", str(out), "--attention", "--query", "40,10"]) == 2
    assert "query (40, 10) is outside the 32x48 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(run), str(src), "--out", str(out), "--attention", "--query", "5"])
    assert "--query takes Y,X" in capsys.readouterr().err


def test_predict_local_masks_of_a_segaware_model(tmp_path, capsys):
    """Train a tiny segmentation-aware LargeFOV 1 step through the CLI, then predict with --attention --query: the
    embedding's colours and a figure of the local attention masks around the pixel; no per-map heat maps."""
    run = tmp_path / "sa"
    args = [a for a in TRAIN if not a.startswith(("model=", "iters="))]
    assert main(args + ["model=segaware_deeplab_largefov_vgg16", "model_kwargs.width=0.125",
                        "model_kwargs.embedding_width=0.125", "model_kwargs.embedding_dim=8", "iters=1",
                        f"run_dir={run}"]) == 0
    image, _ = build_dataset(DATA, "val").load(0)
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(src), "--out", str(out), "--attention", "--query", "10,20"]) == 0
    assert np.asarray(Image.open(out / "in_embedding.png")).shape == image.shape
    fig = Image.open(out / "in_masks_10_20.png")
    assert fig.width >= 4 * image.shape[1] and fig.height >= 2 * image.shape[0]   # image, embedding, 6 layers
    assert "in_masks_10_20.png" in capsys.readouterr().out
    assert not list(out.glob("in_attn_mask*"))


def test_an_error_from_a_loader_worker_keeps_only_its_message():
    """DataLoader re-raises a worker's DataError with the worker's traceback as its text: the user sees one line."""
    from attnseg.cli import _message
    from attnseg.data import DataError
    worker_text = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                   '  File "x.py", line 1, in load\n    raise DataError(msg)\n'
                   "attnseg.data.io.DataError: image a/b.png cannot be decoded; re-copy it\n")
    assert _message(DataError(worker_text)) == "image a/b.png cannot be decoded; re-copy it"
    assert _message(KeyError("unknown model 'x'")) == "unknown model 'x'"
