"""ONNX export (``attnseg.export``): every registered model exports with dynamic batch and size and agrees with
PyTorch under onnxruntime; the export paths of the models equal their eager paths; the file carries the metadata;
``OnnxModel`` runs under ``infer``; the CLI end to end; and the failures say what is wrong.

The registry test builds each model small (options below), makes its weights informative (zero-initialised gates
and skip scores would hide whole branches from the comparison; DeconvNet's std-0.01 decoder gives logits ~1e-5),
exports it and compares at two sizes. One model per family runs in the default suite, the rest are ``slow``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnseg.engine.inference import InferenceConfig, infer
from attnseg.export import (
    META_KEY,
    MIN_ID_AGREEMENT,
    ExportError,
    OnnxModel,
    default_check_sizes,
    default_output,
    export_onnx,
    ops_by_module,
    parity_ok,
)
from attnseg.models import MODELS, create_model, model_task
from attnseg.nn.unpool import MaxUnpool2d, max_unpool2d

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

K = 5
SIZES = ((64, 96), (80, 112))
VGG = {"width": 0.125}
HEAD = {"channels": 32, "mid_channels": 32, "aux_mid": 16}
TINY = {"fcn32s_vgg16": VGG, "fcn16s_vgg16": VGG, "fcn8s_vgg16": VGG, "deconvnet_vgg16": VGG,
        "deconvnet_vgg16_w025": VGG, "deeplab_largefov_vgg16": VGG, "deeplab_largefov_vgg16_w05": VGG}
# One model of each family runs by default (3-15 s each), the others are marked slow. Export time grows with the
# number of graph nodes (every mask tap of a segmentation-aware layer or CRF window is a few), not with the weights:
# the segmentation-aware networks take 1-5 minutes as registered, attention to scale 20-30 s. The default suite runs
# those families in the smaller configurations of SMALL (one segmentation-aware layer and a CRF with 3x3 windows,
# two scales, two pyramid levels); the registry test runs every model as registered (tiny widths aside) in the slow
# part.
# instance models export their dense maps; tests/test_instance_api.py checks them (ids equal to PyTorch's)
SEMANTIC = [n for n in MODELS if model_task(n) == "semantic"]
DEFAULT = {"fcn8s_resnet18", "deconvnet_vgg16", "deeplab_largefov_vgg16_w05", "recurrent_refinement", "flanet_resnet18",
           "dilated_resnet18_danet"}
SMALL = {
    # SegAwareNet with its CRF: fc6 (dilation 12 on the stride-8 grid, the embedding resized) segmentation-aware,
    # the CRF with 3x3 windows at full resolution
    "segaware": {"skip": ("backbone.features.",),
                 "crf": True, "crf_kwargs": {"spatial_window": 3, "bilateral_window": 3, "bilateral_dilation": 2,
                                             "iterations": 1}},
    "attention_to_scale_largefov": {"scales": (1.0, 0.5)},
    "farabet": {"levels": 2},                                  # YUV, Laplacian pyramid, LCN, shared convnet
}


def tiny_kwargs(name: str) -> dict:
    if name in TINY:
        return TINY[name]
    if name.startswith(("flanet", "dilated_resnet", "segaware_dilated")):
        return HEAD
    return {}


def informative_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that make every branch count: He-normal matrices, zero scalar gates (gamma) set to 0.5, random
    BN affine parameters, and BN running statistics taken from one training-mode batch (so that activations stay
    O(1) at any depth and BN folding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bn_params = {id(p) for m in bns for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) in bn_params:
                continue
            if p.numel() == 1:
                if p.item() == 0:
                    p.fill_(0.5)          # attention gates, 0 at init
            elif p.dim() >= 2:
                p.normal_(0, (2 / p[0].numel()) ** 0.5, generator=g)
            else:
                p.normal_(0, 0.1, generator=g)
        for m in bns:
            if m.affine:
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
            m.momentum = 1.0              # running statistics := those of the next batch
        model.train()
        model(torch.randn(2, 3, 64, 96, generator=g))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return informative_(create_model(name, K, **{**tiny_kwargs(name), **kwargs})).eval()


def meta_for(name: str, **extra) -> dict:
    return {"model": name, "model_kwargs": tiny_kwargs(name),
            "classes": {"names": [f"c{i}" for i in range(K)], "palette": [[i, i, i] for i in range(K)],
                        "ignore_index": 255, "reduce_zero_label": False},
            "preprocessing": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "base_scale": 1.0,
                              "test_scale": 1.0},
            "inference": {"mode": "whole", "crop": None, "stride": None, "scales": [1.0], "flip": False,
                          "test_scale": 1.0}, **extra}


def assert_parity(report: dict):
    assert report["parity_ok"], report["checks"]
    for c in report["checks"]:
        assert parity_ok(c) and c["id_agreement"] >= MIN_ID_AGREEMENT, c
        assert c["logit_scale"] > 1e-2, f"uninformative logits: {c}"


# -- the registry ------------------------------------------------------------------------------------------------
def check_export(name: str, path, **kwargs):
    report = export_onnx(build(name, **kwargs), meta_for(name), path, check_sizes=SIZES)
    assert_parity(report)
    assert [c["size"] for c in report["checks"]] == [list(s) for s in SIZES]
    assert report["outputs"] == ["logits"] and report["bytes"] > 0
    assert max(report["min_size"]) <= min(min(s) for s in SIZES)


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in SEMANTIC])
def test_every_model_exports_with_parity(name, tmp_path, request):
    if name == "fcn8s_resnet18":       # exported (with ids) by the fixture the behaviour tests share
        assert_parity(request.getfixturevalue("fcn")[2])
        return
    check_export(name, tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_configurations_export_with_parity(name, tmp_path):
    check_export(name, tmp_path / f"{name}.onnx", **SMALL[name])


def test_default_suite_covers_every_family():
    families = {"fcn": "fcn", "deconvnet": "deconvnet", "deeplab": "deeplab", "farabet": "farabet",
                "recurrent": "recurrent", "rcnn": "recurrent", "attention_to_scale": "scale", "flanet": "flanet",
                "dilated_resnet": "peers", "segaware": "segaware"}

    def family(n):
        return next(f for prefix, f in families.items() if n.startswith(prefix))

    default = DEFAULT | set(SMALL)
    assert {family(n) for n in SEMANTIC} == {family(n) for n in default}
    assert default <= set(SEMANTIC)


# -- one exported FCN shared by the behaviour tests ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fcn(tmp_path_factory):
    """FCN-8s ResNet-18 exported with ids, once for all pytest-xdist workers (a file lock on the shared temp dir)."""
    from filelock import FileLock
    model = build("fcn8s_resnet18")
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    path, done = root / "fcn8s.onnx", root / "fcn8s.report.json"
    with FileLock(str(root / "fcn8s.lock")):
        if not done.is_file():
            report = export_onnx(model, meta_for("fcn8s_resnet18", config={"crop": [72, 88]}), path, with_ids=True,
                                 check_sizes=SIZES)
            done.write_text(json.dumps(report))
    return model, path, json.loads(done.read_text())


def test_ids_output_is_the_argmax(fcn):
    model, path, report = fcn
    assert report["outputs"] == ["logits", "ids"]
    assert all(c["ids_agreement"] >= MIN_ID_AGREEMENT for c in report["checks"])
    onnx_model = OnnxModel(path, threads=1)
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(3))
    logits, ids = onnx_model.session.run(None, {"images": x.numpy()})
    assert ids.dtype.name == "int64" and ids.shape == (2, 57, 83)
    assert (torch.from_numpy(ids) == torch.from_numpy(logits).argmax(1)).all()
    assert torch.equal(onnx_model.predict(x), torch.from_numpy(ids))


def test_dynamic_batch(fcn):
    model, path, _ = fcn
    onnx_model = OnnxModel(path, threads=1)
    for batch in (1, 2, 3):
        x = torch.randn(batch, 3, 64, 96, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x)["logits"]
        out = onnx_model(x)["logits"]
        assert out.shape == (batch, K, 64, 96)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_metadata_round_trip(fcn):
    import onnx
    _, path, report = fcn
    onnx_model = OnnxModel(path)
    meta = meta_for("fcn8s_resnet18", config={"crop": [72, 88]})
    assert onnx_model.meta == meta
    assert onnx_model.outputs == ["logits", "ids"] and onnx_model.num_classes == K
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(props[META_KEY]) == meta
    assert props["attnseg_outputs"] == "logits,ids"
    assert report["opset"] == 20 and report["exporter"].startswith("torch.export")
    assert default_check_sizes(meta) == ((72, 88), (57, 71))
    assert default_check_sizes({}) == ((360, 480), (289, 385))
    assert default_check_sizes({"inference": {"test_scale": 0.5}})[0] == (180, 240)


def test_onnx_model_runs_infer_whole_and_slide(fcn):
    model, path, _ = fcn
    onnx_model = OnnxModel(path, threads=1)
    x = torch.randn(1, 3, 70, 100, generator=torch.Generator().manual_seed(5))
    for cfg in (InferenceConfig(), InferenceConfig(mode="slide", crop=(48, 64), window_batch=2),
                InferenceConfig(scales=(1.0, 0.75), flip=True)):
        ref = infer(model, x, cfg, K)
        out = infer(onnx_model, x, cfg, K)
        assert out.shape == (1, K, 70, 100)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert onnx_model.eval() is onnx_model and onnx_model.train(False) is onnx_model and not onnx_model.training


def test_onnx_model_refuses_attention_and_small_images(fcn):
    _, path, _ = fcn
    onnx_model = OnnxModel(path)
    with pytest.raises(ValueError, match="attention maps need the PyTorch checkpoint"):
        onnx_model(torch.randn(1, 3, 64, 64), return_attention=True)
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        onnx_model(torch.randn(1, 4, 64, 64))


# -- model changes made for export: the same numbers ---------------------------------------------------------------
@pytest.mark.parametrize("size,ceil", [((8, 8), False), ((7, 9), False), ((7, 9), True), ((5, 4), False)])
def test_unpool_scatter_equals_max_unpool2d(size, ceil):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=g)
    pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=ceil, return_indices=True)
    a = pooled.detach().clone().requires_grad_(True)
    b = pooled.detach().clone().requires_grad_(True)
    ref = F.max_unpool2d(a, idx, 2, 2, output_size=size)
    out = MaxUnpool2d(2, 2)(b, idx, output_size=size)
    assert torch.equal(out, ref)
    w = torch.randn(ref.shape, generator=g)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    assert torch.equal(a.grad, b.grad)
    if not ceil and size[0] % 2 == 0 and size[1] % 2 == 0:   # the default size (h - 1)·2 + 2
        assert torch.equal(max_unpool2d(pooled, idx), F.max_unpool2d(pooled, idx, 2, 2))
    with pytest.raises(ValueError, match="one switch per value"):
        max_unpool2d(pooled, idx[:, :1], size)


def test_deconvnet_uses_the_scatter_unpool():
    model = create_model("deconvnet_vgg16_w025", K)
    assert isinstance(model.unpool, MaxUnpool2d)
    assert not any(isinstance(m, nn.MaxUnpool2d) for m in model.modules())


def test_inside_mask_equals_shifted_ones():
    from attnseg.nn.local_attention_mask import inside, shifted, window_offsets
    for H, W, k, d in ((5, 7, 3, 1), (5, 7, 13, 9), (1, 1, 3, 1), (9, 4, 13, 9), (20, 30, 5, 2)):
        ones = torch.ones(1, 1, H, W)
        ref = torch.cat([shifted(ones, dy, dx) for dy, dx in window_offsets(k, d)], 1) > 0
        assert torch.equal(inside(H, W, k, d), ref)


def test_segaware_export_paths_equal_the_functions():
    from attnseg.nn.local_attention_mask import _WindowDistances, window_distances_plain
    from attnseg.nn.segaware_conv import _SegAwareConv, segaware_conv2d_plain
    from attnseg.nn.segaware_filter import _SegAwareFilter, filter_forward
    g = torch.Generator().manual_seed(0)
    for H, W, k, d in ((9, 13, 3, 1), (7, 5, 3, 4), (20, 17, 5, 2), (12, 15, 13, 9)):
        e = torch.randn(2, 6, H, W, generator=g)
        for dist in ("l1", "l2"):
            torch.testing.assert_close(window_distances_plain(e, k, d, dist), _WindowDistances.apply(e, k, d, dist),
                                       rtol=1e-6, atol=1e-6)
        x, m = torch.randn(2, 4, H, W, generator=g), torch.rand(2, k * k, H, W, generator=g)
        w, b = torch.randn(3, 4, k, k, generator=g), torch.randn(3, generator=g)
        for normalize in (False, True):
            torch.testing.assert_close(segaware_conv2d_plain(x, m, w, b, d, normalize),
                                       _SegAwareConv.apply(x, m, w, b, d, normalize, 1e-6), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(filter_forward(x, m, k, d, 1e-6)[0], _SegAwareFilter.apply(x, m, k, d, 1e-6),
                                   rtol=0, atol=0)


def test_export_switches_change_no_numbers(monkeypatch):
    """The models with an export branch give the same logits with it on (as under torch.export) and off."""
    import attnseg.attention.fla as fla
    import attnseg.models.deconvnet as deconvnet
    import attnseg.nn.local_attention_mask as lam
    import attnseg.nn.segaware_conv as sconv
    import attnseg.nn.segaware_filter as sfilt
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    models = [build("flanet_resnet18"), build("deconvnet_vgg16"), build("attention_to_scale"),
              build("segaware", base="fcn8s_resnet18"),
              build("segaware_crf", crf_kwargs={"bilateral_window": 5, "bilateral_dilation": 2})]
    with torch.no_grad():
        ref = [m(x)["logits"] for m in models]
        for mod in (fla, deconvnet, lam, sconv, sfilt):
            monkeypatch.setattr(mod, "is_exporting", lambda: True)
        out = [m(x)["logits"] for m in models]
    for r, o in zip(ref, out):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5 * max(1.0, float(r.abs().max())))


# -- the command line ----------------------------------------------------------------------------------------------
def tiny_run(tmp_path, name="deeplab_largefov_vgg16_w05"):
    from attnseg.engine.checkpoint import save_weights
    run = tmp_path / "run"
    save_weights(run / "checkpoints" / "model.safetensors", build(name),
                 meta_for(name, config={"crop": [64, 96], "model": name}))
    return run


def test_cli_export_end_to_end(tmp_path, capsys):
    from attnseg.cli import main
    from attnseg.engine.checkpoint import load_model
    run = tiny_run(tmp_path)
    assert main(["export", str(run), "--format", "onnx", "--ids", "--opset", "18", "--check-size", "64x96",
                 "--check-size", "77x101"]) == 0
    out = capsys.readouterr().out
    path = run / "export" / "model.onnx"
    assert f"wrote {path}" in out and "opset 18" in out and "outputs logits, ids" in out
    assert "64x96: max |Δ logits|" in out and "77x101" in out and "ids output agrees 100.00 %" in out
    onnx_model = OnnxModel(path)
    assert onnx_model.meta["model"] == "deeplab_largefov_vgg16_w05" and onnx_model.outputs == ["logits", "ids"]
    model, _ = load_model(run)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x)["logits"], model(x)["logits"], rtol=1e-4, atol=1e-4)
    ckpt = run / "checkpoints" / "model.safetensors"
    assert default_output(ckpt) == ckpt.with_suffix(".onnx")        # a checkpoint file: next to it
    assert default_output(run / "checkpoints") == path


def test_cli_export_fails_on_parity(tmp_path, capsys, monkeypatch):
    import attnseg.export as export
    from attnseg.cli import main
    run = tiny_run(tmp_path)

    def fake(model, meta, out, **kwargs):   # the CLI's side only: a report whose second size fails
        checks = [{"size": [64, 96], "max_abs_diff": 1e-6, "logit_scale": 3.0, "id_agreement": 1.0,
                   "torch_layout_diff": 0.0},
                  {"size": [65, 97], "max_abs_diff": 0.5, "logit_scale": 3.0, "id_agreement": 0.9,
                   "torch_layout_diff": 1e-6}]
        return {"path": str(out), "bytes": 1000, "opset": 20, "outputs": ["logits"], "min_size": [2, 2],
                "export_s": 1.0, "checks": checks, "atol": 1e-3, "min_id_agreement": 0.999, "parity_ok": False}

    monkeypatch.setattr(export, "export_onnx", fake)
    assert main(["export", str(run)]) == 2
    captured = capsys.readouterr()
    assert "65x97: max |Δ logits| 5.00e-01" in captured.out and "beyond the tolerance" in captured.out
    assert "differs from PyTorch at 65x97" in captured.err and "kept for inspection" in captured.err


def test_cli_bad_inputs(tmp_path, capsys):
    from attnseg.cli import main
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = tiny_run(tmp_path)
    assert main(["export", str(run), "--format", "tflite"]) == 2
    assert "export format 'tflite' unknown" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "x.pt")]) == 2
    assert "should name an .onnx file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--check-size", "64by96"])
    assert main(["export", str(run), "--opset", "99"]) == 2
    assert "opset 99 is not an ONNX opset" in capsys.readouterr().err
    assert main(["export", str(run), "--opset", "13"]) == 2      # the exporter would silently write 18
    assert "cannot write deeplab_largefov_vgg16_w05 in opset 13" in capsys.readouterr().err


def test_onnx_model_bad_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxModel(junk)
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(ValueError, match="not written by attnseg export"):
        OnnxModel(foreign)


class Unexportable(nn.Module):
    """An op without an ONNX translation (erfinv)."""

    def forward(self, x):
        return x + torch.special.erfinv(torch.tanh(x) * 0.5)


def test_unexportable_operator_names_the_op_and_the_module(tmp_path):
    model = create_model("deeplab_largefov_vgg16_w05", K, width=0.125).eval()
    model.fc8 = nn.Sequential(model.fc8, Unexportable())
    with pytest.raises(ExportError) as info:
        export_onnx(model, meta_for("deeplab_largefov_vgg16_w05"), tmp_path / "x.onnx", check=False)
    msg = str(info.value)
    assert "erf_inv" in msg or "erfinv" in msg
    assert "fc8.1 (Unexportable)" in msg and "\n" not in msg
    assert not (tmp_path / "x.onnx").exists()
    found = ops_by_module(model, torch.randn(1, 3, 32, 32))
    assert "fc8.1 (Unexportable)" in found["erfinv"]


class SizeAsNumber(nn.Module):
    """A model that reads the width of its logits into a Python number (int()): the exported graph would keep the
    traced width."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)["logits"]
        return {"logits": logits[..., :int(logits.shape[-1] * 1.0)]}


def test_frozen_size_is_refused(tmp_path):
    model = SizeAsNumber(create_model("deeplab_largefov_vgg16_w05", K, width=0.125)).eval()
    with pytest.raises(ExportError, match="only valid for a width of") as info:
        export_onnx(model, meta_for("deeplab_largefov_vgg16_w05"), tmp_path / "x.onnx", check=False)
    assert "int()" in str(info.value) and "\n" not in str(info.value)


def test_runtime_failures_name_the_node_and_the_module():
    from attnseg.export import _ort_failure
    run = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
                       "Expand node. Name:'node_Expand_12' Status Message: invalid expand shape")
    msg = str(_ort_failure(run, {"node_Expand_12": "block.attention (CrissCrossAttention)"}, "run it"))
    assert "at its Expand node from block.attention (CrissCrossAttention)" in msg and "\n" not in msg
    load = RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Foo(20) "
                        "node with name 'node_foo_1'")
    assert "at its Foo node from head (Bar)" in str(_ort_failure(load, {"node_foo_1": "head (Bar)"}, "load it"))


def test_parity_helpers():
    ok = {"max_abs_diff": 1e-6, "logit_scale": 10.0, "id_agreement": 1.0, "torch_layout_diff": 0.0}
    assert parity_ok(ok)
    assert not parity_ok({**ok, "max_abs_diff": 0.1})
    assert parity_ok({**ok, "max_abs_diff": 0.1, "torch_layout_diff": 0.02})   # a model sensitive to rounding
    assert not parity_ok({**ok, "max_abs_diff": 0.1, "torch_layout_diff": 0.005})
    assert not parity_ok({**ok, "id_agreement": 0.99})
    assert not parity_ok({**ok, "ids_agreement": 0.9})
