"""The attention-over-locations classifiers: CNN, ST-CNN, RAM (REINFORCE with a learned baseline, RNN or LSTM core)
and the DRAW-read classifier. Shapes, where gradients go, RAM's hybrid loss against a hand-written one, the
first glimpses each paper prescribes, determinism at eval, bf16 and fp32 paths, and ONNX export."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnseg.models import CLASSIFICATION_MODELS, create_model, model_task
from attnseg.nn.glimpse_sensor import glimpse_boxes

KW = {"cnn_classifier": {}, "st_cnn": {"out_size": 24}, "st_cnn_scale": {"out_size": 24},
      "ram": {"glimpses": 3, "glimpse_size": 8, "scales": 2},
      "ram_lstm": {"glimpses": 3, "glimpse_size": 8, "scales": 2},
      "draw_read": {"glimpses": 3, "read_size": 6, "image_size": 40}}


def batch(B=4, S=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, S, S, generator=g), torch.randint(0, 10, (B,), generator=g)


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_forward_loss_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, **KW[name])
    assert model_task(name) == "classification" and m.task == "classification"
    x, y = batch()
    out = m(x)
    assert out["logits"].shape == (4, 10)
    loss, parts = m.loss(out, y)
    assert torch.isfinite(loss) and "ce" in parts
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing}"
    assert m.predict(x).shape == (4,)


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_eval_is_deterministic_and_glimpses_are_in_the_image(name):
    m = create_model(name, num_classes=10, **KW[name]).eval()
    x, _ = batch()
    a, b = m(x), m(x)
    assert torch.equal(a["logits"], b["logits"])
    steps = m.glimpses(a, 1)
    if name == "cnn_classifier":
        assert steps == []
        return
    assert len(steps) == (KW[name].get("glimpses", 1))
    for t, s in enumerate(steps):
        assert s["step"] == t and s["kind"] in ("boxes", "grid", "sampling_grid")
        if s["kind"] == "boxes":   # centred at l in [-1, 1]²: every box centre lies in the image (edges may not)
            c = (s["boxes"][:, :2] + s["boxes"][:, 2:]) / 2
            assert (c >= 0).all() and (c <= 40).all()
            side = s["boxes"][:, 2] - s["boxes"][:, 0]
            assert side.tolist() == [8, 16]
        else:   # at initialisation both cover the whole image (DRAW's later grids within the weights' small noise)
            pts = s["points"]
            assert pts.min() >= -0.5 and pts.max() <= 40.5 and pts.max() - pts.min() > 35


@pytest.mark.parametrize("name", ["ram", "ram_lstm"])
def test_ram_samples_locations_in_training_and_follows_the_mean_in_eval(name):
    m = create_model(name, num_classes=10, **KW[name])
    x, _ = batch()
    torch.manual_seed(1)
    a = m.train()(x)
    torch.manual_seed(2)
    b = m(x)
    assert not torch.equal(a["locations"], b["locations"])          # sampled
    assert torch.equal(a["locations"][:, 0], torch.zeros(4, 2))      # l_0 = the centre
    assert a["locations"].abs().max() <= 1 and a["log_pi"].shape == (4, 2)
    e = m.eval()(x)
    assert "log_pi" not in e and e["locations"].shape == (4, 3, 2)


def test_ram_hybrid_loss_equals_the_papers_formula():
    torch.manual_seed(0)
    m = create_model("ram", num_classes=10, **KW["ram"]).train()
    x, y = batch()
    out = m(x)
    loss, parts = m.loss(out, y)
    # by hand: CE + Σ_t −log π(l_t) (R − b_t) (advantage held constant) + mean (R − b_t)²; log π from torch's Normal
    logits, b, locs = out["logits"], out["baseline"], out["locations"]
    R = (logits.argmax(1) == y).float()
    std = m.std
    ce = F.cross_entropy(logits, y)
    baseline = ((b - R[:, None]) ** 2).mean()
    reinforce = -(out["log_pi"] * (R[:, None] - b[:, :-1]).detach()).sum(1).mean()
    assert torch.allclose(loss, ce + baseline + reinforce, atol=1e-6)
    assert math.isclose(float(parts["reward"]), float(R.mean()))
    # log π of a 2-D isotropic Gaussian is at most that of its mode: −2 log σ − log 2π
    assert (out["log_pi"] <= -2 * math.log(std) - math.log(2 * math.pi) + 1e-5).all()
    assert locs.shape == (4, 3, 2)


def test_ram_log_pi_is_the_normal_log_density_of_the_sample():
    """Drive the policy by a fixed locator output: log π must equal torch.distributions.Normal's."""
    torch.manual_seed(0)
    m = create_model("ram", num_classes=10, **KW["ram"]).train()
    with torch.no_grad():
        m.locator.weight.zero_()
        m.locator.bias.copy_(torch.tensor([0.3, -0.2]))
    x, _ = batch()
    torch.manual_seed(5)
    out = m(x)
    mean = torch.tanh(torch.tensor([0.3, -0.2]))
    torch.manual_seed(5)
    eps = torch.randn(4, 2)   # the first draw of the forward: the sample of step 1 (unclamped, well inside [−1, 1])
    sample = mean + m.std * eps
    ref = torch.distributions.Normal(mean, m.std).log_prob(sample).sum(1)
    assert torch.allclose(out["log_pi"][:, 0], ref, atol=1e-5)
    assert torch.allclose(out["locations"][:, 1], sample.clamp(-1, 1), atol=1e-6)


def test_ram_baseline_learns_only_from_its_regression_and_detach_policy_stops_reinforce_at_h():
    torch.manual_seed(0)
    m = create_model("ram", num_classes=10, **KW["ram"]).train()
    x, y = batch()
    out = m(x)
    # the baseline term alone moves only the baseline layer (h is detached for it)
    ((out["baseline"] - 1) ** 2).mean().backward()
    moved = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {"baseline.weight", "baseline.bias"}
    for name, reaches_core in ((False, True), (True, False)):
        m2 = create_model("ram", num_classes=10, detach_policy=name, **KW["ram"]).train()
        o = m2(x)
        o["log_pi"].sum().backward()
        core = m2.core_g.weight.grad
        assert (core is not None and core.abs().sum() > 0) == reaches_core
        assert m2.locator.weight.grad.abs().sum() > 0
        assert m2.classifier.weight.grad is None


def test_st_cnn_starts_at_the_identity_and_sees_the_whole_image():
    m = create_model("st_cnn", num_classes=10, out_size=40).eval()
    x, _ = batch()
    out = m(x)
    assert torch.allclose(out["theta"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))
    assert torch.allclose(out["warped"], x, atol=1e-6)                    # identity θ at the same size
    grid = m.glimpses(out, 0)[0]["points"]                               # (h, w, 2) pixel (x, y)
    assert grid.shape == (40, 40, 2)
    assert abs(grid[0, 0, 0] - 0.5) < 1e-4 and abs(grid[-1, -1, 1] - 39.5) < 1e-4   # pixel centres


def test_st_cnn_scale_variant_has_no_rotation_or_shear():
    torch.manual_seed(0)
    m = create_model("st_cnn_scale", num_classes=10, out_size=24)
    with torch.no_grad():   # move off the identity
        for p in m.st.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta = m(batch()[0])["theta"]
    assert torch.equal(theta[:, 0, 1], torch.zeros(4)) and torch.equal(theta[:, 1, 0], torch.zeros(4))


def test_draw_classifier_first_glimpse_is_the_whole_image():
    """DRAW §4.1 with h_0 = 0: the attention layer's bias; ours starts at g̃ = 0, δ̃ = 1 (eq. 24), σ = stride / 2."""
    m = create_model("draw_read", num_classes=10, glimpses=2, read_size=6, image_size=40).eval()
    out = m(batch()[0])
    first = m.glimpses(out, 0)[0]
    pts = first["points"]                                                 # (N, N, 2) pixel-centre (x, y)
    assert pts.shape == (6, 6, 2)
    assert abs(pts[0, 0, 0]) < 1e-3 and abs(pts[-1, -1, 0] - 39) < 1e-3    # the grid spans pixels 0..39
    assert abs(first["sigma"] - 39 / 5 / 2) < 1e-3 and abs(first["gamma"] - 1) < 1e-6


def test_glimpse_boxes_of_ram_by_hand():
    """l = (0, 0) on 40x40: the centre (20, 20); 8 px box at 16..24, 16 px at 12..28 (xyxy, edge coordinates)."""
    m = create_model("ram", num_classes=10, **KW["ram"]).eval()
    with torch.no_grad():
        m.locator.weight.zero_()
        m.locator.bias.copy_(torch.tensor([0.5493061, -0.5493061]))   # atanh(±0.5): later glimpses at l = (0.5, -0.5)
    out = m(batch()[0])
    steps = m.glimpses(out, 2)
    assert steps[0]["boxes"].tolist() == [[16, 16, 24, 24], [12, 12, 28, 28]]
    # l = (0.5, -0.5): centre x = 0.75 * 40 = 30, y = 0.25 * 40 = 10
    assert steps[1]["boxes"].tolist() == [[26, 6, 34, 14], [22, 2, 38, 18]]
    assert (glimpse_boxes(out["locations"][2], 40, 40, 8, 2)[1].numpy() == steps[1]["boxes"]).all()


def test_reinforce_moves_the_policy_mean_towards_a_rewarded_sample():
    """The policy-gradient term's gradient on the locator bias equals −Σ (s − μ)/σ² (1 − μ²) A (by hand), so a
    descent step moves the mean towards samples with a positive advantage."""
    torch.manual_seed(0)
    m = create_model("ram", num_classes=10, detach_policy=True, **KW["ram"]).train()
    with torch.no_grad():
        m.locator.weight.zero_()
        m.locator.bias.copy_(torch.tensor([0.2, -0.1]))
    out = m(batch()[0])
    A = torch.tensor([1.0, -0.5, 0.25, 2.0])[:, None]                    # a fixed advantage per image
    (-(out["log_pi"] * A).sum()).backward()
    mu = torch.tanh(torch.tensor([0.2, -0.1]))
    s = out["locations"][:, 1:]                                            # the samples (none clamped here)
    assert (s.abs() < 1).all()
    hand = -((s - mu) / m.std ** 2 * (1 - mu ** 2) * A[:, :, None]).sum((0, 1))
    assert torch.allclose(m.locator.bias.grad, hand, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_step_under_each_precision(name, dtype):
    """fp32 and bf16 autocast (what ``precision=auto`` picks on AVX512-BF16 / AMX machines) both train."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, **KW[name]).train()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = m(x)
    loss, _ = m.loss(out, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    if dtype == torch.bfloat16:
        with torch.no_grad():
            ref = m.eval()(x)["logits"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = m(x)["logits"].float()
        assert (low - ref).abs().max() < 0.1 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name, kwargs, message", [
    ("ram", {"glimpses": 1}, "glimpses >= 2"),
    ("ram", {"core": "gru"}, "choose rnn"),
    ("ram", {"std": 0}, "std must be > 0"),
    ("draw_read", {"glimpses": 0}, "glimpses >= 1"),
    ("st_cnn", {"mode": "projective"}, "projective"),
])
def test_bad_options_are_refused_with_the_choices(name, kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        create_model(name, num_classes=10, **kwargs)


@pytest.mark.parametrize("name", ["ram", "draw_read", "st_cnn"])
def test_export_to_onnx_matches_pytorch(tmp_path, name):
    pytest.importorskip("onnxruntime")
    from attnseg.export import OnnxModel, export_onnx
    m = create_model(name, num_classes=10, **KW[name]).eval()
    meta = {"model": name, "task": "classification", "classes": {"names": [str(i) for i in range(10)]},
            "inference": {"input_size": [40, 40], "channels": 1}}
    report = export_onnx(m, meta, tmp_path / "m.onnx")
    assert report["parity_ok"] and report["min_size"] == [40, 40]
    onnx = OnnxModel(tmp_path / "m.onnx")
    x = batch(B=5)[0]
    with torch.no_grad():
        assert torch.allclose(onnx(x)["logits"], m(x)["logits"], atol=1e-4)   # batch 5: the batch is dynamic
    with pytest.raises(ValueError, match="classifies 40x40 images, not 32x32"):
        onnx(torch.rand(1, 1, 32, 32))


def test_cnn_flattened_head_depends_on_position_and_takes_its_size_only():
    torch.manual_seed(0)
    flat = create_model("cnn_classifier", num_classes=10, flatten_size=[40, 40]).eval()
    pooled = create_model("cnn_classifier", num_classes=10).eval()
    x = torch.zeros(1, 1, 40, 40)
    x[..., 12:18, 12:18] = 1
    moved = torch.roll(x, shifts=(8, 8), dims=(2, 3))     # the same blob 8 px on (a multiple of the total stride)
    with torch.no_grad():
        assert not torch.allclose(flat(x)["logits"], flat(moved)["logits"], atol=1e-4)
        assert torch.allclose(pooled(x)["logits"], pooled(moved)["logits"], atol=1e-5)   # global max: invariant
    assert flat.body.head[0].in_features == 64 * 5 * 5 and flat.expected_size == (40, 40)
    assert pooled.expected_size is None   # the trainer refuses data of another size for the flattened head
