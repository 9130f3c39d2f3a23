"""Bad arguments to `attnseg predict` and `attnseg eval`: exit 2, the argument and the fix named, no traceback,
the run directory untouched; plus the predict defects of issue 11 (same file names, folders, --out a file,
images too big for memory)."""

import numpy as np
import pytest
from PIL import Image

from attnseg.cli import main
from attnseg.data import read_label

from .conftest import expect_bad, tree_digest

DATA = "synthetic:train=4,val=2,size=32x32"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train", "model=fcn8s_resnet18", f"data={DATA}", "crop=[32,32]", "batch_size=2", "iters=1",
                 "warmup_iters=1", "val_interval=0", "workers=0", "progress=false", "precision=fp32",
                 f"run_dir={run}"]) == 0
    return run


def image(path, hw=(24, 40), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path)
    return path


PREDICT_CASES = [  # (extra arguments, words the message must hold)
    (["--test-scale", "0"], ["--test-scale", "> 0", "'0'"]),
    (["--test-scale", "-1"], ["--test-scale", "> 0"]),
    (["--tta", "scales=0"], ["scales=0", "> 0"]),
    (["--tta", "scales=a,b"], ["scales=a,b", "> 0"]),
    (["--tta", "flip=maybe"], ["flip=maybe", "true or false"]),
    (["--tta", "zoom=2"], ["zoom=2", "scales=", "flip="]),
    (["--stride", "0,0"], ["--stride", ">= 1", "'0,0'"]),
    (["--mode", "slide", "--crop", "0,5"], ["--crop", ">= 1"]),
    (["--crop", "abc"], ["--crop", "'abc'"]),
    (["--mode", "slide"], ["--mode slide needs --crop"]),
    (["--mode", "tiles"], ["--mode", "whole", "slide"]),
    (["--max-memory", "0"], ["--max-memory", "> 0"]),
    (["--query", "5,5"], ["--query", "--attention"]),
    (["--attention", "--query", "1000,5"], ["1000", "outside"]),
    (["--attention", "--query", "5"], ["--query takes Y,X"]),
    (["--device", "tpu"], ["tpu", "cpu"]),
    (["--precision", "fp8"], ["fp8", "auto, fp32"]),
    (["--backend", "onnx"], ["--backend onnx runs an .onnx file", "not "]),
    (["--backend", "tensorrt"], ["--backend", "torch", "onnx"]),
]


@pytest.mark.parametrize("extra,needles", PREDICT_CASES, ids=[" ".join(c[0]) for c in PREDICT_CASES])
def test_bad_predict_argument(run_cli, run, tmp_path, extra, needles):
    src = image(tmp_path / "in.png")
    before = tree_digest(run)
    expect_bad(run_cli("predict", run, src, "--out", tmp_path / "out", *extra), *needles)
    assert tree_digest(run) == before


EVAL_CASES = [
    (["--max-images", "0"], ["--max-images", "> 0"]),
    (["--test-scale", "0"], ["--test-scale", "> 0"]),
    (["--tta", "scales=0"], ["scales=0", "> 0"]),
    (["--stride", "0,0"], ["--stride", ">= 1"]),
    (["--split", "nope"], ["nope", "train", "val"]),
]


@pytest.mark.parametrize("extra,needles", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_bad_eval_argument(run_cli, run, extra, needles):
    before = tree_digest(run)
    expect_bad(run_cli("eval", run, "--data", DATA, "--no-progress", *extra), *needles)
    assert tree_digest(run) == before


def test_eval_on_a_dataset_with_other_classes(run_cli, run, tmp_path):
    from tests.conftest import write_camvid
    root = write_camvid(tmp_path / "cv", 2, (8, 8))
    expect_bad(run_cli("eval", run, "--data", f"camvid:{root}", "--no-progress"), "classes", "differ")


def test_eval_shows_progress(run_cli, run):
    res = run_cli("eval", run, "--data", DATA)
    assert res.rc == 0 and "eval" in res.err and "2/2" in res.err  # the bar, on stderr like training's


def test_predict_missing_and_non_image_inputs(run_cli, run, tmp_path):
    expect_bad(run_cli("predict", run, tmp_path / "nope.png", "--out", tmp_path / "o"), "nope.png", "does not exist")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    expect_bad(run_cli("predict", run, text, "--out", tmp_path / "o"), "notes.png", "not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_bad(run_cli("predict", run, empty, "--out", tmp_path / "o"), "holds no images")


def test_out_naming_an_existing_file(run_cli, run, tmp_path):
    src = image(tmp_path / "in.png")
    f = tmp_path / "taken"
    f.write_text("keep me")
    expect_bad(run_cli("predict", run, src, "--out", f), "--out", "is a file", "folder")
    assert f.read_text() == "keep me"


def test_inputs_with_the_same_file_name_keep_both_outputs(run_cli, run, tmp_path):
    a, b = image(tmp_path / "a" / "im.png", seed=1), image(tmp_path / "b" / "im.png", (30, 20), seed=2)
    res = run_cli("predict", run, a, b, "--out", tmp_path / "out")
    assert res.rc == 0 and "share a file name" in res.out
    assert read_label(tmp_path / "out" / "a_im_ids.png").shape == (24, 40)
    assert read_label(tmp_path / "out" / "b_im_ids.png").shape == (30, 20)


def test_the_same_image_twice_is_predicted_once(run_cli, run, tmp_path):
    a = image(tmp_path / "im.png")
    res = run_cli("predict", run, a, tmp_path / "." / "im.png", "--out", tmp_path / "out")
    assert res.rc == 0 and "named twice" in res.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im_ids.png", "im_overlay.png"]


def test_a_folder_argument_predicts_every_image_in_it(run_cli, run, tmp_path):
    for i in range(3):
        image(tmp_path / "imgs" / f"x{i}.png", seed=i)
    (tmp_path / "imgs" / "readme.txt").write_text("not an image: skipped")
    assert run_cli("predict", run, tmp_path / "imgs", "--out", tmp_path / "out").rc == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*_ids.png")) == ["x0_ids.png", "x1_ids.png", "x2_ids.png"]


def test_an_image_too_big_for_the_memory_limit(run_cli, run, tmp_path):
    """Estimated before it runs: above the limit a whole-image inference slides, and stops with the figure when
    even that does not fit."""
    src = image(tmp_path / "big.png", (1200, 1600))
    res = run_cli("predict", run, src, "--out", tmp_path / "out", "--max-memory", "0.2")  # > the fixed overhead
    expect_bad(res, "needs about", "over the limit of", "--max-memory")
    assert not list((tmp_path / "out").glob("*_ids.png"))
    res = run_cli("predict", run, src, "--out", tmp_path / "out", "--max-memory", "0.5")
    assert res.rc == 0 and "using sliding windows instead (slide(crop=(512, 512)" in res.out
    assert read_label(tmp_path / "out" / "big_ids.png").shape == (1200, 1600)


def test_an_onnx_file_given_as_a_torch_checkpoint(run_cli, tmp_path):
    src = image(tmp_path / "in.png")
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not onnx")
    expect_bad(run_cli("predict", fake, src, "--out", tmp_path / "out", "--backend", "torch"),
               "--backend torch runs a run directory or checkpoint", "model.onnx")
    expect_bad(run_cli("predict", fake, src, "--out", tmp_path / "out", "--attention"),
               "--attention needs the PyTorch checkpoint")
    expect_bad(run_cli("predict", tmp_path / "missing.onnx", src, "--out", tmp_path / "out"),
               "missing.onnx does not exist", "attnseg export")
