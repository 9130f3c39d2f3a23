import pytest
import torch
import torch.nn.functional as F

from attnseg.losses import segmentation_loss
from attnseg.models import MODELS, create_model
from attnseg.models.recurrent_refinement import RecurrentRefinement, recurrent_refinement

from .base import ModelTest

K = 3


class TestRecurrentRefinementN3(ModelTest):
    """The generic contract (odd sizes 37x53 and 45x67 included) with three passes."""
    model_name = "rcnn3_fcn8s_resnet18"


class TestRecurrentRefinementDeepLabN2(ModelTest):
    model_name = "recurrent_refinement"
    kwargs = {"base": "deeplab_largefov_vgg16", "passes": 2, "base_kwargs": {"width": 1 / 16}}
    input_size = (33, 41)


def build(passes: int, seed: int = 0, **kwargs) -> RecurrentRefinement:
    torch.manual_seed(seed)
    return create_model("recurrent_refinement", num_classes=K, passes=passes, **kwargs)


def images(size=(40, 48), batch=2, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g).to(dtype)


def settle_bn(model, x):
    """Move BN running statistics away from their initial values."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_registry_and_structure():
    m2, m3 = create_model("rcnn2_fcn8s_resnet18", K), create_model("rcnn3_fcn8s_resnet18", K)
    assert isinstance(m2, RecurrentRefinement) and (m2.passes, m3.passes) == (2, 3)
    assert m2.base.backbone.conv1.in_channels == 3 + K
    assert m2.num_classes == K and not m2.detach and m2.planes == "softmax"


def test_passes_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="passes >= 1"):
            recurrent_refinement(K, passes=bad)


def test_bad_options():
    with pytest.raises(ValueError, match="planes"):
        recurrent_refinement(K, planes="probs")
    with pytest.raises(ValueError, match="in_channels"):
        recurrent_refinement(K, base_kwargs={"in_channels": 3})


def test_base_without_in_channels_fails_clearly(monkeypatch):
    def no_in_channels(num_classes, width=1.0):
        raise AssertionError("must not be built")

    def kwargs_only(num_classes, **kwargs):
        raise TypeError(f"no_in_channels() got an unexpected keyword argument {next(iter(kwargs))!r}")

    monkeypatch.setitem(MODELS, "no_in_channels", no_in_channels)
    monkeypatch.setitem(MODELS, "kwargs_only", kwargs_only)
    for name in ("no_in_channels", "kwargs_only"):
        with pytest.raises(ValueError, match=f"{name}.*does not accept in_channels"):
            recurrent_refinement(K, base=name)


@pytest.mark.parametrize("base,base_kwargs", [
    ("fcn32s_resnet18", {}), ("fcn8s_vgg16", {"width": 1 / 16}), ("deeplab_largefov_vgg16", {"width": 1 / 16}),
    ("deconvnet_vgg16", {"width": 1 / 16}),
])
def test_registry_bases_take_the_planes(base, base_kwargs):
    """The builder families of the brief (fcn_resnet, fcn_vgg16, deeplab_largefov_vgg16, deconvnet_vgg16)
    accept in_channels and read 3 + K channels."""
    model = build(2, base=base, base_kwargs=base_kwargs).eval()
    first = next(m for m in model.base.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 3 + K
    with torch.no_grad():
        assert model(images((37, 53), batch=1))["logits"].shape == (1, K, 37, 53)


# ---- N = 1 is the plain network ------------------------------------------------------------------------------

def test_one_pass_is_base_on_zero_planes():
    model = build(1)
    x = images()
    settle_bn(model, images(seed=3))
    with torch.no_grad():
        got = model(x)["logits"]
        ref = model.base(torch.cat([x, torch.zeros(2, K, *x.shape[-2:])], 1))["logits"]
    assert torch.equal(got, ref)
    model.train()
    out = model(x)
    assert out["aux"] == {} and "aux_weights" not in out


@pytest.mark.parametrize("base,base_kwargs,conv1", [
    ("fcn8s_resnet18", {}, "backbone.conv1.weight"),
    ("deeplab_largefov_vgg16", {"width": 1 / 16}, "backbone.features.0.weight"),
])
def test_one_pass_equals_plain_three_channel_network(base, base_kwargs, conv1):
    """A plain 3-channel registry model with the base's weights (first conv sliced to the RGB channels) gives the
    same logits as the wrapper with N = 1, in float64."""
    model = build(1, base=base, base_kwargs=base_kwargs).double()
    settle_bn(model, images(seed=3, dtype=torch.float64))
    sd = model.base.state_dict()
    assert sd[conv1].shape[1] == 3 + K
    plain = create_model(base, K, **base_kwargs).double().eval()
    assert plain.state_dict()[conv1].shape[1] == 3
    plain.load_state_dict({k: (v[:, :3] if k == conv1 else v) for k, v in sd.items()}, strict=True)
    x = images((37, 53), dtype=torch.float64)
    with torch.no_grad():
        got, ref = model(x)["logits"], plain(x)["logits"]
    assert got.dtype == torch.float64 and ref.shape == got.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert got.abs().max() > 1e-3  # not trivially zero


# ---- shared weights ----------------------------------------------------------------------------------------------

def test_parameters_shared_across_passes():
    counts = {n: sum(p.numel() for p in build(n).parameters()) for n in (1, 2, 3)}
    base = sum(p.numel() for p in create_model("fcn8s_resnet18", K, in_channels=3 + K).parameters())
    assert counts[1] == counts[2] == counts[3] == base
    assert build(2, seed=0).state_dict().keys() == build(3, seed=0).state_dict().keys()


# ---- the recurrence and the loss on every pass -----------------------------------------------------------------

def manual_passes(model, x, passes):
    """Reference recurrence written out: pass p reads cat(x, softmax(previous logits))."""
    planes, outs = torch.zeros(x.shape[0], K, *x.shape[-2:]), []
    for _ in range(passes):
        logits = model.base(torch.cat([x, planes], 1))["logits"]
        outs.append(logits)
        planes = torch.softmax(logits, 1)
    return outs


@pytest.mark.parametrize("passes", [2, 3])
def test_loss_on_every_pass(passes):
    model = build(passes).train()
    x, target = images(), torch.randint(0, K, (2, 40, 48))
    target[0, :5] = 255
    torch.manual_seed(11)                       # dropout draws the same masks in both runs
    out = model(x)
    torch.manual_seed(11)
    ref = manual_passes(model, x, passes)
    assert set(out["aux"]) == {f"pass{p}" for p in range(1, passes)}
    assert out["aux_weights"] == {f"pass{p}": 1.0 for p in range(1, passes)}
    torch.testing.assert_close(out["logits"], ref[-1], rtol=0, atol=0)
    for p in range(1, passes):
        torch.testing.assert_close(out["aux"][f"pass{p}"], ref[p - 1], rtol=0, atol=0)
    total, parts = segmentation_loss(out, target, ignore_index=255, aux_weight=0.4)
    expected = sum(F.cross_entropy(r, target, ignore_index=255) for r in ref)
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"loss_main"} | {f"loss_aux_pass{p}" for p in range(1, passes)}


def test_eval_matches_manual_recurrence_and_planes_options():
    model = settle_bn(build(3), images(seed=3))
    x = images((37, 53))
    with torch.no_grad():
        out = model(x)
        ref = manual_passes(model, x, 3)
        assert out["aux"] == {}
        torch.testing.assert_close(out["logits"], ref[-1])
        for planes in ("log_softmax", "logits"):
            model.planes = planes
            other = model(x)["logits"]
            assert other.shape == out["logits"].shape and not torch.allclose(other, out["logits"])


def test_later_passes_read_the_planes():
    """The planes reach the network: pass 2 differs from pass 1 once the plane weights of the first conv are
    nonzero, and zeroing those weights makes every pass identical to pass 1."""
    model = build(2).train()
    x = images()
    torch.manual_seed(1)
    out = model(x)
    assert not torch.allclose(out["logits"], out["aux"]["pass1"])
    with torch.no_grad():
        model.base.backbone.conv1.weight[:, 3:] = 0
    torch.manual_seed(1)
    model.base.eval()
    with torch.no_grad():
        a = model(x)["logits"]
        b = model.base(torch.cat([x, torch.zeros(2, K, 40, 48)], 1))["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---- BPTT ------------------------------------------------------------------------------------------------------

def pass_logits_with_grad(model, x):
    """Run the model, keeping every pass's logits with ``retain_grad`` (forward hook on the base)."""
    seen = []

    def hook(_module, _inputs, output):
        output["logits"].retain_grad()
        seen.append(output["logits"])

    handle = model.base.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    return out, seen


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_through_passes(detach):
    model = build(2, detach=detach).eval()     # eval: no aux, the loss sees only the last pass
    x = images()
    out, seen = pass_logits_with_grad(model, x)
    assert len(seen) == 2 and out["aux"] == {}
    out["logits"].square().mean().backward()
    first = seen[0].grad
    if detach:
        assert first is None or torch.count_nonzero(first) == 0
    else:
        assert first is not None and first.abs().max() > 0 and torch.isfinite(first).all()


def test_detach_changes_gradients_not_values():
    x, target = images(), torch.randint(0, K, (2, 40, 48))
    grads, logits = {}, {}
    for detach in (False, True):
        model = build(2, detach=detach).eval()
        out = model(x)
        F.cross_entropy(out["logits"], target).backward()
        logits[detach] = out["logits"].detach()
        grads[detach] = model.base.backbone.conv1.weight.grad.clone()
    torch.testing.assert_close(logits[False], logits[True], rtol=0, atol=0)
    assert not torch.allclose(grads[False], grads[True])


# ---- inspection and sizes ----------------------------------------------------------------------------------------

def test_pass_probs_attention():
    model = settle_bn(build(3), images(seed=3))
    with torch.no_grad():
        out = model(images((37, 53)), return_attention=True)
    probs = out["attention"]["pass_probs"]
    assert probs.shape == (2, 3, 37, 53)
    assert (probs >= 1 / K - 1e-6).all() and (probs <= 1).all()
    last = torch.softmax(out["logits"], 1).amax(1)
    torch.testing.assert_close(probs[:, -1], last)


def test_base_attention_is_passed_on():
    model = build(1, base="deconvnet_vgg16", base_kwargs={"width": 1 / 16}).eval()
    with torch.no_grad():
        att = model(images((37, 53), batch=1), return_attention=True)["attention"]
    assert set(att) == {"pass_probs", "base_switches"}
    assert att["base_switches"].shape == (1, 1, 37, 53)


@pytest.mark.parametrize("size", [(37, 53), (45, 67), (1, 1), (31, 97)])
def test_odd_sizes_three_passes(size):
    model = build(3).train()
    out = model(images(size))
    assert out["logits"].shape == (2, K, *size) and set(out["aux"]) == {"pass1", "pass2"}
    assert all(a.shape == (2, K, *size) for a in out["aux"].values())
