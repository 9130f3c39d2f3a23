"""attnseg.load(...).predict(...): every input form, the checkpoint's own preprocessing, results against an
independent re-implementation (numpy normalisation + the model's plain forward), the Hugging Face pipeline form,
attention pictures of each model family, and every bad input's message."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import attnseg
from attnseg.data.io import DataError
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .conftest import tiny_checkpoint

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fcn_run(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("api") / "fcn", num_classes=4)


@pytest.fixture(scope="module")
def predictor(fcn_run):
    return attnseg.load(fcn_run, precision="fp32")


def reference_logits(run, image: np.ndarray, test_scale: float = 1.0) -> torch.Tensor:
    """The model's plain forward on an image normalised with numpy: (K, H, W) logits at the image's size."""
    from attnseg.engine.checkpoint import load_model
    model, _ = load_model(run)
    x = (image.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = torch.from_numpy(x.transpose(2, 0, 1)).float()[None]
    H, W = image.shape[:2]
    if test_scale != 1.0:
        x = F.interpolate(x, size=(round(H * test_scale), round(W * test_scale)), mode="bilinear",
                          align_corners=False, antialias=test_scale < 1)
    with torch.no_grad():
        logits = model(x)["logits"]
    return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)[0]


def test_ids_match_an_independent_forward(fcn_run, predictor):
    result = predictor.predict(IMAGE, probs=True)
    ref = reference_logits(fcn_run, IMAGE)
    assert result.ids.shape == (32, 48) and result.ids.dtype == np.uint8
    np.testing.assert_array_equal(result.ids, ref.argmax(0).numpy())
    np.testing.assert_allclose(result.probs, ref.softmax(0).numpy(), atol=1e-5)
    assert result.classes == ["class0", "class1", "class2", "class3"] and len(result.palette) == 4


def test_every_input_form_gives_the_same_result(tmp_path, predictor):
    path = tmp_path / "in.png"
    Image.fromarray(IMAGE).save(path)
    chw = torch.from_numpy(IMAGE).permute(2, 0, 1)
    forms = [path, str(path), Image.fromarray(IMAGE), IMAGE, chw, chw.float() / 255,
             np.concatenate([IMAGE, np.full((32, 48, 1), 255, np.uint8)], axis=2)]   # RGBA: alpha dropped
    expected = predictor.predict(IMAGE).ids
    for form in forms:
        np.testing.assert_array_equal(predictor.predict(form).ids, expected)
    many = predictor.predict([path, IMAGE])
    assert isinstance(many, list) and len(many) == 2
    batch = predictor.predict(torch.stack([chw, chw.flip(-1)]))
    assert len(batch) == 2
    np.testing.assert_array_equal(batch[0].ids, expected)
    np.testing.assert_array_equal(batch[1].ids, predictor.predict(IMAGE[:, ::-1]).ids)
    grey = predictor.predict(IMAGE[..., 0])                                     # (H, W) grey -> 3 equal channels
    np.testing.assert_array_equal(grey.ids, predictor.predict(np.repeat(IMAGE[..., :1], 3, 2)).ids)


def test_the_checkpoints_test_scale_is_applied(tmp_path):
    run = tiny_checkpoint(tmp_path / "half", num_classes=3, inference={"test_scale": 0.5})
    result = attnseg.load(run, precision="fp32").predict(IMAGE)
    np.testing.assert_array_equal(result.ids, reference_logits(run, IMAGE, 0.5).argmax(0).numpy())
    assert "test_scale=0.5" in result.inference
    override = attnseg.load(run, precision="fp32", test_scale=1.0).predict(IMAGE)
    np.testing.assert_array_equal(override.ids, reference_logits(run, IMAGE).argmax(0).numpy())


def test_confidence_stats_overlay_and_pipeline_form(predictor):
    result = predictor.predict(IMAGE, probs=True)
    top = result.probs.max(0)
    stats = result.class_stats()
    assert sum(s["pixels"] for s in stats) == IMAGE.shape[0] * IMAGE.shape[1]
    assert sum(s["share"] for s in stats) == pytest.approx(1.0)
    for s in stats:
        mask = result.ids == s["id"]
        assert s["pixels"] == mask.sum() and s["confidence"] == pytest.approx(top[mask].mean(), rel=1e-5)
    pipe = result.to_pipeline()
    assert [p["label"] for p in pipe] == [s["name"] for s in stats]
    union = np.zeros(result.ids.shape, int)
    for p, s in zip(pipe, stats):
        m = np.asarray(p["mask"])
        assert p["mask"].mode == "L" and set(np.unique(m)) <= {0, 255} and p["score"] == s["confidence"]
        union += m == 255
    assert (union == 1).all()                                                   # masks are disjoint and cover all
    colours = np.asarray(result.palette, np.float64)[result.ids]
    expected = np.rint(0.7 * IMAGE + 0.3 * colours).astype(np.uint8)
    np.testing.assert_array_equal(result.overlay(alpha=0.3), expected)
    assert result.timing_ms["inference"] > 0 and result.timing_ms["total"] >= result.timing_ms["inference"]


def test_tta_averages_probabilities(fcn_run):
    p = attnseg.load(fcn_run, precision="fp32", flip=True)
    result = p.predict(IMAGE, probs=True)
    ref = (reference_logits(fcn_run, IMAGE).softmax(0) +
           reference_logits(fcn_run, IMAGE[:, ::-1].copy()).softmax(0).flip(-1)) / 2
    np.testing.assert_allclose(result.probs, ref.numpy(), atol=1e-5)
    np.testing.assert_array_equal(result.ids, ref.argmax(0).numpy())


def test_save_writes_the_predict_files(tmp_path, predictor):
    from attnseg.data import read_label
    ids_path, overlay_path = predictor.predict(IMAGE).save(tmp_path / "x")
    np.testing.assert_array_equal(read_label(ids_path), predictor.predict(IMAGE).ids)
    assert np.asarray(Image.open(overlay_path)).shape == IMAGE.shape


# -- attention -----------------------------------------------------------------------------------------------------
def test_attention_comes_from_the_same_pass_as_the_ids(tmp_path):
    run = tiny_checkpoint(tmp_path / "cc", "dilated_resnet18_ccnet", 3, {"channels": 16, "mid_channels": 16})
    p = attnseg.load(run, precision="fp32")
    with_maps = p.predict(IMAGE, attention=True, query=(5, 7))
    np.testing.assert_array_equal(with_maps.ids, p.predict(IMAGE).ids)
    att = with_maps.attention
    assert att.needs_query and "criss_cross" in att.maps and att.maps["criss_cross"].shape[0] == 1
    pictures, notes = att.pictures((5, 7))
    names = {pic.name for pic in pictures}
    assert {"query_5_7", "attn_criss_cross_r1_q5_7", "attn_criss_cross_composed_q5_7"} <= names and not notes
    only, _ = att.pictures((31, 47), query_only=True)
    assert only and all(pic.query == (31, 47) for pic in only)
    centre, notes = att.pictures()
    assert any("image centre (16, 24)" in n for n in notes) and any(p.name == "query_16_24" for p in centre)
    for pic in pictures:
        assert pic.image.dtype == np.uint8 and pic.image.ndim == 3 and pic.image.shape[2] == 3


def test_attention_pictures_of_scale_refinement_and_baselines(tmp_path):
    run = tiny_checkpoint(tmp_path / "ms", "attention_to_scale", 3, {"scales": [1, 0.5], "head_channels": 8})
    pictures, _ = attnseg.load(run, precision="fp32").predict(IMAGE, attention=True).attention.pictures()
    assert {"attn_scale_1", "attn_scale_0.5", "pred_scale_1", "pred_scale_0.5", "scales"} <= {p.name for p in pictures}
    run = tiny_checkpoint(tmp_path / "rr", "recurrent_refinement", 3, {"passes": 2})
    pictures, _ = attnseg.load(run, precision="fp32").predict(IMAGE, attention=True).attention.pictures()
    assert [p.name for p in pictures] == ["attn_pass_probs_0", "attn_pass_probs_1"]
    assert pictures[1].title.startswith("pass 2") and pictures[0].image.shape == IMAGE.shape
    run = tiny_checkpoint(tmp_path / "fcn", "fcn8s_resnet18", 3)
    result = attnseg.load(run, precision="fp32").predict(IMAGE, attention=True)
    pictures, notes = result.attention.pictures()
    assert not pictures and "returns no attention maps" in notes[0]


# -- bad inputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, needle", [
    (IMAGE.astype(np.float32), "must be uint8"),
    (torch.from_numpy(IMAGE).permute(2, 0, 1).float(), "holds values from 0 to 255"),
    (torch.zeros(4, 8, 8), "must be (3, H, W)"),
    (np.zeros((8, 8, 5), np.uint8), "must be (H, W, 3)"),
    (torch.zeros(3, 8, 8, dtype=torch.int64), "must be uint8 (0..255) or float"),
    ([], "empty list"),
])
def test_bad_images_are_named(predictor, bad, needle):
    with pytest.raises(ValueError, match=None) as e:
        predictor.predict(bad)
    assert needle in str(e.value)


def test_bad_inputs_with_their_messages(tmp_path, fcn_run, predictor):
    with pytest.raises(TypeError, match="give a file path, a PIL image"):
        predictor.predict(42)
    with pytest.raises(DataError, match="does not exist"):
        predictor.predict(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="broken.png"):
        predictor.predict(tmp_path / "broken.png")
    with pytest.raises(ValueError, match=r"query \(40, 10\) is outside the 32x48 image"):
        predictor.predict(IMAGE, attention=True, query=(40, 10))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        attnseg.load(tmp_path)
    with pytest.raises(ValueError, match="--mode slide needs --crop"):
        attnseg.load(fcn_run, mode="slide")
    with pytest.raises(ValueError, match="precision 'fp8' unknown"):
        attnseg.load(fcn_run, precision="fp8")
    with pytest.raises(ValueError, match="max_memory_gb=0 must be"):
        attnseg.load(fcn_run, max_memory_gb=0)
    with pytest.raises(FileNotFoundError, match="attnseg export"):
        attnseg.load(tmp_path / "none.onnx")


def test_the_memory_limit_switches_to_windows(fcn_run):
    p = attnseg.load(fcn_run, precision="fp32", max_memory_gb=0.2)
    big = RNG.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    result = p.predict(big)
    assert result.inference.startswith("slide") and "sliding windows" in result.notes[0]
    assert result.ids.shape == (600, 800)


def test_predictor_describes_itself(predictor):
    d = predictor.describe()
    assert d["model"] == "fcn8s_resnet18" and d["classes"] == predictor.classes and d["num_params"] > 1e6
    assert d["metrics"] == {"mIoU": 0.5, "aAcc": 0.75} and d["precision"] == "fp32+channels_last"
    assert "fcn8s_resnet18" in repr(predictor)


def test_an_onnx_file_predicts_what_the_checkpoint_predicts(tmp_path, fcn_run, predictor):
    pytest.importorskip("onnxruntime")
    from attnseg.engine.checkpoint import load_model
    from attnseg.export import export_onnx
    model, meta = load_model(fcn_run)
    path = tmp_path / "model.onnx"
    export_onnx(model, meta, path, check_sizes=((32, 48), (40, 56)))
    onnx_predictor = attnseg.load(path)
    assert onnx_predictor.backend == "onnx" and onnx_predictor.classes == predictor.classes
    result = onnx_predictor.predict(IMAGE, probs=True)
    np.testing.assert_array_equal(result.ids, predictor.predict(IMAGE).ids)
    np.testing.assert_allclose(result.probs, predictor.predict(IMAGE, probs=True).probs, atol=1e-4)
    with pytest.raises(ValueError, match="attention maps need the PyTorch checkpoint"):
        onnx_predictor.predict(IMAGE, attention=True)


def test_both_precision_paths_and_auto_in_both_directions(fcn_run, monkeypatch):
    """bf16 autocast (what precision=auto picks on a CPU with native bf16) against fp32, on every machine; and
    auto resolved with the CPU check patched both ways."""
    fp32 = attnseg.load(fcn_run, precision="fp32").predict(IMAGE, probs=True)
    bf16_predictor = attnseg.load(fcn_run, precision="bf16")
    assert bf16_predictor.precision.name.startswith("bf16")
    bf16 = bf16_predictor.predict(IMAGE, probs=True)
    assert bf16.probs.dtype == np.float32 and np.isfinite(bf16.probs).all()
    np.testing.assert_allclose(bf16.probs, fp32.probs, atol=0.05)           # bf16 keeps ~3 significant digits
    margin = np.sort(fp32.probs, 0)[-1] - np.sort(fp32.probs, 0)[-2]
    clear = margin > 0.1                                                      # pixels bf16 cannot flip
    np.testing.assert_array_equal(bf16.ids[clear], fp32.ids[clear])
    import attnseg.engine.precision as precision
    for native, name in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        p = attnseg.load(fcn_run, precision="auto", device="cpu")
        assert p.precision.name.startswith(name)
        assert p.predict(IMAGE).ids.shape == IMAGE.shape[:2]
