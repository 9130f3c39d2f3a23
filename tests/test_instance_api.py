"""Instance models through the Python API (``attnseg.load`` -> ``InstancePredictor`` -> ``InstanceResult``), the CLI
(``attnseg eval``, ``attnseg predict``, ``attnseg export``) and ONNX, on one small watershed U-Net trained for a
minute's fraction: results against the model's own ``predict_instances``, boxes and RLE masks against the id map
(pycocotools decodes them), the 16-bit PNG round trip, tiling above ``max_side``, and every refusal's message."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import attnseg
from attnseg.api_instances import InstancePredictor, InstanceResult
from attnseg.cli import main
from attnseg.data.synthetic_instances import nuclei_field
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attnseg.engine.checkpoint import load_model
from attnseg.engine.instance_tiling import tile_starts, tiled_instances
from attnseg.metrics.instance import image_metrics
from attnseg.viz.instances import rle_decode

from .conftest import tiny_checkpoint, train_tiny_instance_run

DATA = "nuclei:n=8,val=3,size=64x64,count=3-8"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_instance_run(tmp_path_factory.mktemp("instance_api") / "run", DATA)


@pytest.fixture(scope="module")
def predictor(run):
    return attnseg.load(run, precision="fp32")


def field(seed=11, size=(64, 64), count=(5, 8)) -> np.ndarray:
    return nuclei_field(seed, size, count)[0]


@pytest.fixture(scope="module")
def img(predictor):
    """A 64x64 field on which the trained model finds at least two nuclei."""
    for seed in range(10, 30):
        im = field(seed)
        if predictor.predict(im).count >= 2:
            return im
    pytest.fail("the trained model finds fewer than two nuclei on every test field")


def normalized(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def present(ids) -> list[int]:
    return [int(k) for k in np.unique(ids) if k]


# -- the Python API ------------------------------------------------------------------------------------------------

def test_load_returns_an_instance_predictor(predictor, run):
    assert isinstance(predictor, InstancePredictor) and predictor.task == "instances"
    assert predictor.backend == "torch" and predictor.name == "unet_watershed_w16"
    assert predictor.classes == ["background", "nucleus"] and predictor.class_names == ["nucleus"]
    d = predictor.describe()
    assert d["task"] == "instances" and d["model"] == "unet_watershed_w16" and d["step"] == 60
    assert d["inference"] == "whole up to 1024 px, else tiles 512 (overlap 96)" and d["data"] == DATA
    assert set(d["metrics"]) <= {"DSB", "AP", "AP50", "SBD", "|DiC|"} and "DSB" in d["metrics"]
    assert "unet_watershed_w16" in repr(predictor)
    # the checkpoint file itself loads the same way
    assert isinstance(attnseg.load(run / "checkpoints" / "best.safetensors", precision="fp32"), InstancePredictor)


def test_predict_equals_the_models_own_predict_instances(predictor, run, img):
    result = predictor.predict(img)
    assert isinstance(result, InstanceResult) and result.kind == "instance"
    assert result.ids.shape == (64, 64) and result.ids.dtype == np.int32
    model, _ = load_model(run)
    (ref,) = model.predict_instances(normalized(img)[None])
    np.testing.assert_array_equal(result.ids, ref["ids"].numpy())
    assert [result.scores[k] for k in present(result.ids)] == pytest.approx(ref["scores"].tolist(), rel=1e-5)
    assert result.model == "unet_watershed_w16" and result.notes == []
    assert set(result.timing_ms) >= {"forward", "group", "inference", "total"}
    assert result.timing_ms["total"] >= result.timing_ms["inference"] > 0


def test_instances_boxes_areas_and_scores_match_the_id_map(predictor, run, img):
    result = predictor.predict(img)
    model, _ = load_model(run)
    with torch.no_grad():
        fg = torch.sigmoid(model.eval()(normalized(img)[None])["fg"][0, 0]).numpy()
    rows = result.instances
    assert [r["id"] for r in rows] == present(result.ids) and result.count == len(rows) >= 2
    for r in rows:
        m = result.ids == r["id"]
        ys, xs = np.nonzero(m)
        assert r["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert r["area"] == m.sum() and r["label"] == 1 and r["class"] == "nucleus"
        assert 0 <= r["score"] <= 1 and r["score"] == pytest.approx(fg[m].mean(), rel=1e-5)


def test_to_torchvision(predictor, img):
    result = predictor.predict(img)
    tv = result.to_torchvision()
    N = result.count
    assert tv["boxes"].shape == (N, 4) and tv["boxes"].dtype == torch.float32
    assert tv["labels"].tolist() == [1] * N and tv["scores"].dtype == torch.float32
    assert tv["masks"].shape == (N, 64, 64) and tv["masks"].dtype == torch.bool
    for n, r in enumerate(result.instances):
        assert torch.equal(tv["masks"][n], torch.from_numpy(result.ids == r["id"]))
        assert tv["boxes"][n].tolist() == r["box"] and tv["scores"][n].item() == pytest.approx(r["score"])
    rebuilt = np.zeros((64, 64), np.int32)
    for n, k in enumerate(present(result.ids)):
        rebuilt[tv["masks"][n].numpy()] = k
    np.testing.assert_array_equal(rebuilt, result.ids)                 # the masks tile the id map exactly


def test_to_json_rle_masks_decode_back(predictor, img):
    mask_util = pytest.importorskip("pycocotools.mask")
    result = predictor.predict(img)
    js = json.loads(json.dumps(result.to_json()))                      # JSON-ready
    assert js["kind"] == "instance" and (js["height"], js["width"]) == (64, 64)
    assert js["count"] == result.count == len(js["instances"]) and js["classes"] == ["nucleus"]
    assert js["model"] == "unet_watershed_w16" and js["inference"] == result.inference
    for r in js["instances"]:
        truth = result.ids == r["id"]
        rle = r["mask"]
        assert rle["size"] == [64, 64] and sum(rle["counts"]) == 64 * 64
        ours = rle_decode(rle)
        coco = mask_util.decode(mask_util.frPyObjects(rle, 64, 64)).astype(bool)
        np.testing.assert_array_equal(ours, truth)
        np.testing.assert_array_equal(coco, truth)
        assert int(mask_util.area(mask_util.frPyObjects(rle, 64, 64))) == r["area"]


def test_save_writes_a_16_bit_png_an_overlay_and_json(predictor, img, tmp_path):
    result = predictor.predict(img)
    written = result.save(tmp_path / "x")
    assert [p.name for p in written] == ["x_instances.png", "x_overlay.png", "x_instances.json"]
    with Image.open(written[0]) as im:
        assert im.mode.startswith("I")                                  # 16-bit grey, not 8-bit
        np.testing.assert_array_equal(np.asarray(im).astype(np.int32), result.ids)
    overlay = np.asarray(Image.open(written[1]))
    np.testing.assert_array_equal(overlay, result.overlay())
    assert overlay.shape == (64, 64, 3)
    np.testing.assert_array_equal(overlay[result.ids == 0], img[result.ids == 0])  # background untouched
    assert json.loads(written[2].read_text()) == json.loads(json.dumps(result.to_json()))


def test_save_refuses_more_ids_than_16_bits_hold(tmp_path):
    ids = np.zeros((4, 4), np.int32)
    ids[0, 0] = 70000
    r = InstanceResult(image=np.zeros((4, 4, 3), np.uint8), ids=ids, scores={})
    with pytest.raises(ValueError, match="70000 instances do not fit a 16-bit PNG"):
        r.save(tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_several_images_and_the_attention_pictures(predictor, img):
    results = predictor.predict([img, field(3)])
    assert isinstance(results, list) and len(results) == 2
    np.testing.assert_array_equal(results[0].ids, predictor.predict(img).ids)
    att = predictor.predict(img, attention=True).attention
    assert att is not None and att.needs_query is False
    pictures, notes = att.pictures()
    assert [p.name for p in pictures] == ["attn_fg", "attn_boundary", "instance_colours"] and notes == []
    assert all(p.image.shape == (64, 64, 3) and p.image.dtype == np.uint8 for p in pictures)
    assert pictures[0].title == "foreground probability"
    none, notes = att.pictures((3, 4), query_only=True)
    assert none == [] and "no per-pixel attention" in notes[0]


def test_large_images_are_tiled(run, tmp_path):
    big = nuclei_field(5, size=(150, 170), count=(20, 30))[0]
    p = attnseg.load(run, precision="fp32", max_side=64, tile=48, overlap=16)
    assert p.inference.describe() == "whole up to 64 px, else tiles 48 (overlap 16)"
    result = p.predict(big)
    n = len(tile_starts(150, 48, 16)) * len(tile_starts(170, 48, 16))
    assert result.ids.shape == (150, 170)
    assert result.notes == [f"170x150 exceeds 64 px: predicted in {n} tiles of 48 px (overlap 16) and merged"]
    # the same merge with the model's own prediction of each tile
    model, _ = load_model(run)
    x = normalized(big).permute(1, 2, 0).numpy()

    def predict_tile(t):
        return model.predict_instances(torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1)[None])[0]["ids"]
    np.testing.assert_array_equal(result.ids, tiled_instances(x, lambda t: predict_tile(t).numpy(), (48, 48), 16))
    assert set(result.scores) == set(present(result.ids)) and all(0 <= v <= 1 for v in result.scores.values())
    with_maps = p.predict(big, attention=True)
    assert with_maps.attention is None
    assert "tiling replaced" in with_maps.notes[-1]
    whole = attnseg.load(run, precision="fp32").predict(big)
    assert whole.notes == [] and whole.ids.shape == (150, 170)


def test_test_scale_predicts_at_another_size_and_answers_at_the_input_size(run, img):
    p = attnseg.load(run, precision="fp32", test_scale=0.5)
    assert "test_scale=0.5" in p.inference.describe()
    r = p.predict(img)
    assert r.ids.shape == (64, 64) and set(r.scores) == set(present(r.ids))


@pytest.mark.parametrize("kwargs", [{"mode": "slide"}, {"crop": (32, 32)}, {"stride": (16, 16)},
                                    {"scales": (1.0, 2.0)}, {"flip": True}])
def test_semantic_inference_settings_are_refused(run, kwargs):
    with pytest.raises(ValueError, match=r"unet_watershed_w16 is an instance model: it takes test_scale \(and tiles "
                                         r"large images itself\), not mode, crop, stride, scales or flip"):
        attnseg.load(run, **kwargs)


@pytest.mark.parametrize("kwargs", [{"tile": 8}, {"max_side": 32, "tile": 48}, {"tile": 48, "overlap": 48},
                                    {"overlap": -1}, {"test_scale": 0.0}])
def test_bad_tile_settings_are_refused(run, kwargs):
    with pytest.raises(ValueError, match=r"instance inference needs test_scale > 0, tile >= 16, 0 <= overlap < "
                                         r"tile and max_side >= tile; got"):
        attnseg.load(run, precision="fp32", **kwargs)


def test_tile_settings_on_a_semantic_model_are_refused(tmp_path):
    sem = tiny_checkpoint(tmp_path / "sem")
    with pytest.raises(ValueError, match=r"apply to instance models; fcn8s_resnet18 is semantic"):
        attnseg.load(sem, tile=64)


def test_bf16_predictor_runs(run, img):
    r = attnseg.load(run, precision="bf16").predict(img)
    assert r.ids.shape == (64, 64) and r.count >= 1


# -- the CLI -----------------------------------------------------------------------------------------------------

def test_cli_eval_writes_instance_metrics(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--data", "nuclei:n=3", "--split", "val", "--out", str(out), "--no-progress",
                 "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "nuclei:n=3 [val], 3 images" in text and "metrics written to" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "instances" and metrics["images"] == 3 and metrics["split"] == "val"
    assert metrics["data"] == "nuclei:n=3" and metrics["checkpoint"] == str(run)
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"nuclei_val_{i:04d}" for i in range(3)]
    # the same numbers from the Python API and the metric function
    from attnseg.data import build_dataset
    ds = build_dataset("nuclei:n=3", "val")
    p = attnseg.load(run, precision="fp32")
    ref = [image_metrics(p.predict(ds.load(i)[0]).ids, ds.load(i)[1]) for i in range(3)]
    for row, m in zip(rows, ref):
        assert int(row["n_pred"]) == m["n_pred"] and int(row["n_gt"]) == m["n_gt"]
        assert float(row["DSB"]) == pytest.approx(m["DSB"], abs=1e-5)
    assert metrics["DSB"] == pytest.approx(np.mean([m["DSB"] for m in ref]))
    assert metrics["SBD"] == pytest.approx(np.mean([m["SBD"] for m in ref]))


@pytest.mark.parametrize("flags, needle", [
    (["--mode", "slide"], "unet_watershed_w16 is an instance model: --mode does not apply (it takes --test-scale, "
                          "and --tile, --tile-overlap and --max-side for large images)"),
    (["--mode", "slide", "--crop", "32,32"], "--mode, --crop do not apply"),
])
def test_cli_eval_refuses_semantic_flags(run, tmp_path, capsys, flags, needle):
    assert main(["eval", str(run), "--data", "nuclei:n=1,size=32x32", "--out", str(tmp_path / "e"),
                 "--no-progress", *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_cli_eval_refuses_a_dataset_of_the_other_task(run, tmp_path, capsys):
    assert main(["eval", str(run), "--data", "synthetic:n=1,size=32x32", "--no-progress"]) == 2
    assert "unet_watershed_w16 is an instance model but synthetic:n=1,size=32x32 is a semantic dataset" in \
        capsys.readouterr().err
    sem = tiny_checkpoint(tmp_path / "sem")
    assert main(["eval", str(sem), "--data", "nuclei:n=1,size=32x32", "--no-progress"]) == 2
    assert "nuclei:n=1,size=32x32 holds instances but fcn8s_resnet18 is a semantic model" in capsys.readouterr().err


def test_cli_predict_writes_instances_overlay_json_and_attention(run, img, tmp_path, capsys):
    src = tmp_path / "cells.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(src), "--out", str(out), "--attention", "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    expected = attnseg.load(run, precision="fp32").predict(img)
    assert f"64x64, {expected.count} instances" in text
    names = sorted(p.name for p in out.iterdir())
    assert {"cells_instances.png", "cells_overlay.png", "cells_instances.json", "cells_attn_fg.png",
            "cells_attn_boundary.png", "cells_instance_colours.png"} <= set(names)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "cells_instances.png")).astype(np.int32), expected.ids)
    js = json.loads((out / "cells_instances.json").read_text())
    assert js["count"] == expected.count and [r["id"] for r in js["instances"]] == present(expected.ids)
    assert Image.open(out / "cells_attn_fg.png").size == (64, 64)


def test_cli_predict_tiles_a_large_image(run, tmp_path, capsys):
    src = tmp_path / "big.png"
    Image.fromarray(nuclei_field(5, size=(150, 170), count=(20, 30))[0]).save(src)
    assert main(["predict", str(run), str(src), "--out", str(tmp_path / "p"), "--max-side", "64", "--tile", "48",
                 "--tile-overlap", "16", "--precision", "fp32"]) == 0
    assert "exceeds 64 px: predicted in" in capsys.readouterr().out
    ids = np.asarray(Image.open(tmp_path / "p" / "big_instances.png")).astype(np.int32)
    ref = attnseg.load(run, precision="fp32", max_side=64, tile=48, overlap=16).predict(np.asarray(Image.open(src)))
    np.testing.assert_array_equal(ids, ref.ids)


# -- ONNX -----------------------------------------------------------------------------------------------------------

def test_cli_export_refuses_ids_for_instance_models(run, tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out), "--ids"]) == 2
    err = capsys.readouterr().err
    assert "--ids is the argmax of a semantic model's logits; unet_watershed_w16 is an instance model" in err
    assert not out.exists()


def test_onnx_export_predicts_the_torch_ids(run, img, tmp_path, capsys):
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "instance model: the file's logits are the network's dense maps fg (1 channel), boundary (1 channel)" in text
    onnx = attnseg.load(out)
    torch_p = attnseg.load(run, precision="fp32")
    assert isinstance(onnx, InstancePredictor) and onnx.backend == "onnx" and onnx.describe()["task"] == "instances"
    for im in (img, field(3), nuclei_field(5, size=(150, 170), count=(20, 30))[0]):
        a, b = onnx.predict(im), torch_p.predict(im)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert [a.scores[k] for k in present(a.ids)] == pytest.approx([b.scores[k] for k in present(b.ids)], abs=1e-5)
    # tiling works on the exported maps too
    big = nuclei_field(5, size=(150, 170), count=(20, 30))[0]
    t_onnx = attnseg.load(out, max_side=64, tile=48, overlap=16).predict(big)
    t_torch = attnseg.load(run, precision="fp32", max_side=64, tile=48, overlap=16).predict(big)
    np.testing.assert_array_equal(t_onnx.ids, t_torch.ids)
    assert t_onnx.notes == t_torch.notes and "tiles" in t_onnx.notes[0]


def test_an_exported_discriminative_model_groups_its_maps_like_the_torch_model():
    """``OnnxInstanceModel`` rebuilds the post-processing from the file's metadata and splits the concatenated maps
    back (``unflat_maps``); here the 'file' is the network itself, returning ``flat_maps`` as ONNX would."""
    from attnseg.api_instances import OnnxInstanceModel
    from attnseg.data.labels import LabelSpec
    from attnseg.engine.precision import Precision
    from attnseg.models import create_model
    torch.manual_seed(0)
    kwargs = {"width": 8, "depth": 2, "embedding_dim": 3, "min_size": 3, "fg_threshold": 0.45}
    net = create_model("unet_discriminative_w16", 1, **kwargs).eval()
    meta = {"model": "unet_discriminative_w16", "model_kwargs": kwargs, "task": "instances",
            "classes": LabelSpec(["background", "cell"]).to_dict(), "inference": {"max_side": 64, "tile": 32,
                                                                               "overlap": 8}}

    class FileLike:
        def __init__(self):
            self.meta = meta

        def __call__(self, images):
            with torch.no_grad():
                return {"logits": net.flat_maps(net(images)), "aux": {}}
    wrapped = OnnxInstanceModel(FileLike())
    assert wrapped.post.map_channels() == {"fg": 1, "embedding": 3} and wrapped.post.post["min_size"] == 3
    x = torch.randn(1, 3, 24, 20)
    maps = wrapped(x)
    with torch.no_grad():
        ref = net(x)
    assert list(maps) == ["fg", "embedding"]
    for k in maps:
        torch.testing.assert_close(maps[k], ref[k])
    cpu = torch.device("cpu")
    a = InstancePredictor(wrapped, meta, device=cpu, precision=Precision(cpu, None, False), backend="onnx")
    b = InstancePredictor(net, meta, device=cpu, precision=Precision(cpu, None, False), backend="torch")
    assert a.class_names == ["cell"] and a.inference.describe() == "whole up to 64 px, else tiles 32 (overlap 8)"
    counts = []
    for im in (field(4, (40, 48)), field(6, (90, 70))):                  # whole, and tiled (90 > 64)
        ra, rb = a.predict(im), b.predict(im)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        assert ra.scores == pytest.approx(rb.scores) and ra.notes == rb.notes
        counts.append(ra.count)
    assert counts[0] >= 1 and counts[1] >= 2 and "12 tiles of 32 px" in ra.notes[0]


def test_cli_predict_refuses_semantic_flags(run, img, tmp_path, capsys):
    src = tmp_path / "cells.png"
    Image.fromarray(img).save(src)
    assert main(["predict", str(run), str(src), "--out", str(tmp_path / "p"), "--mode", "slide"]) == 2
    assert "unet_watershed_w16 is an instance model: it takes test_scale" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())
