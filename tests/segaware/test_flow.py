"""Optical-flow part of segmentation-aware networks: synthetic pairs, EPE metrics, flow filters, FlowNetS and the
benchmark script (tiny)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnseg.data.flow_synthetic import FlowSceneConfig, FlowScenes, flow_seed_of, generate_flow_pair
from attnseg.flow import bilateral_flow_filter, segaware_flow_filter
from attnseg.metrics.flow import FlowMetrics, boundary_band, endpoint_error, flow_epe, motion_boundaries
from attnseg.models.flownet_simple import FlowNetS, correlation, flownet_simple, multiscale_epe

SMALL = (40, 56)
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "segaware_flow.py"


def _warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image (3, H, W) sampled bilinearly at p + flow(p): (3, H, W)."""
    H, W = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    gx, gy = (xs + flow[0]) / (W - 1) * 2 - 1, (ys + flow[1]) / (H - 1) * 2 - 1
    grid = torch.stack([gx, gy], -1)[None]                                      # (1, H, W, 2)
    return F.grid_sample(image[None], grid, align_corners=True)[0]


# ------------------------------------------------------------------------------------------------ dataset

def test_dataset_is_deterministic_and_well_formed():
    cfg = FlowSceneConfig(size=SMALL)
    a, b = FlowScenes("train", 3, cfg, seed=0), FlowScenes("train", 3, cfg, seed=0)
    x, y = a[1], b[1]
    assert set(x) == {"image1", "image2", "flow", "segmentation", "valid"}
    for k in x:
        assert torch.equal(x[k], y[k]), k
    assert x["image1"].shape == (3, *SMALL) and x["image1"].dtype == torch.float32
    assert x["flow"].shape == (2, *SMALL) and x["segmentation"].dtype == torch.int64 and x["valid"].dtype == torch.bool
    assert 0 <= float(x["image1"].min()) and float(x["image1"].max()) <= 1
    assert not torch.equal(FlowScenes("test", 3, cfg, seed=0)[1]["image1"], x["image1"])    # disjoint streams
    assert not torch.equal(FlowScenes("train", 3, cfg, seed=1)[1]["image1"], x["image1"])
    flows = torch.stack([a[i]["flow"] for i in range(3)])
    assert flows.norm(dim=1).max() <= cfg.max_motion + 1e-4
    with pytest.raises(ValueError, match="no split"):
        FlowScenes("dev", 3, cfg)


def test_integer_translation_is_exact():
    cfg = FlowSceneConfig(size=SMALL, affine=0, background_affine=0, integer_motion=True, noise=0, supersample=1)
    for i in range(3):
        p = generate_flow_pair(flow_seed_of(0, "test", i), cfg)
        assert np.array_equal(p.flow, np.round(p.flow))
        ys, xs = np.nonzero(p.valid)
        dx, dy = p.flow[ys, xs, 0].astype(int), p.flow[ys, xs, 1].astype(int)
        assert p.valid.mean() > 0.5
        np.testing.assert_array_equal(p.image2[ys + dy, xs + dx], p.image1[ys, xs])


def test_subpixel_translation_warps_back_and_background_follows_its_motion():
    cfg = FlowSceneConfig(size=SMALL, affine=0, background_affine=0, noise=0)
    ds = FlowScenes("val", 2, cfg)
    for i in range(2):
        item = ds[i]
        keep = item["valid"] & ~boundary_band(motion_boundaries(item["flow"][None]), 2)[0]
        err = (_warp(item["image2"], item["flow"]) - item["image1"]).abs().mean(0)[keep].mean()
        still = (item["image2"] - item["image1"]).abs().mean(0)[keep].mean()
        assert err < 0.25 * still and err < 0.03
    # default (affine) scenes: every background pixel moves with the background's own affine motion
    cfg = FlowSceneConfig(size=SMALL, background_affine=1.0)
    p = generate_flow_pair(flow_seed_of(0, "train", 5), cfg)
    ys, xs = np.nonzero(p.segmentation == 0)
    bg = p.layers[0]
    assert not np.allclose(bg.M, np.eye(2))
    np.testing.assert_allclose(p.flow[ys, xs], bg.displacement(xs.astype(float), ys.astype(float)), atol=1e-5)
    for l, layer in enumerate(p.layers[1:], 1):
        ys, xs = np.nonzero(p.segmentation == l)
        np.testing.assert_allclose(p.flow[ys, xs], layer.displacement(xs.astype(float), ys.astype(float)),
                                   atol=1e-5)


def test_textures_have_contrast_well_above_the_pixel_noise():
    # the first textures had a mean |dI/dx| of ~0.014 per pixel without noise (the 0.01 pixel noise alone gives
    # ~0.011), and FlowNetS did not learn; motion must be visible in the frames
    cfg = FlowSceneConfig(size=SMALL, noise=0.0)
    ds = FlowScenes("train", 6, cfg)
    grads = [float((ds[i]["image1"][..., 1:] - ds[i]["image1"][..., :-1]).abs().mean()) for i in range(6)]
    assert np.mean(grads) > 0.025, grads


# ------------------------------------------------------------------------------------------------ metrics

def test_epe_against_hand_computation():
    gt = torch.zeros(1, 2, 2, 2)
    pred = gt.clone()
    pred[0, :, 0, 0] = torch.tensor([3.0, 4.0])         # EPE 5
    pred[0, :, 1, 1] = torch.tensor([-1.0, 0.0])        # EPE 1
    torch.testing.assert_close(endpoint_error(pred, gt), torch.tensor([[[5.0, 0.0], [0.0, 1.0]]]))
    valid = torch.tensor([[[True, True], [False, True]]])
    r = flow_epe(pred, gt, valid)
    assert r["epe"] == pytest.approx(6 / 3) and r["n"] == 3
    assert flow_epe(pred, gt)["epe"] == pytest.approx(6 / 4)
    with pytest.raises(ValueError, match="same shape"):
        endpoint_error(pred, gt[..., :1])


def test_boundary_band_on_a_hand_made_flow():
    flow = torch.zeros(1, 2, 5, 9)
    flow[0, 0, :, 5:] = 2.0                              # a vertical motion edge between columns 4 and 5
    flow[0, 1, :, 1] = 0.3                               # a change below the 0.5 px threshold: no boundary
    b = motion_boundaries(flow)
    expect = torch.zeros(1, 5, 9, dtype=torch.bool)
    expect[..., 4:6] = True
    assert torch.equal(b, expect)
    assert torch.equal(boundary_band(b, 0), expect)
    band = boundary_band(b, 2)
    assert torch.equal(band[0, 0], torch.tensor([False, False, True, True, True, True, True, True, False]))
    assert bool(boundary_band(b, 1.5)[0, 2, 3]) and not bool(boundary_band(b, 1.5)[0, 2, 2])
    seg = torch.zeros(1, 5, 9, dtype=torch.long)
    seg[..., 7:] = 1
    both = motion_boundaries(flow, segmentation=seg, mode="either")
    assert both[0, :, 6:8].all() and not both[0, :, 2].any()
    # the accumulator pools pixels over batches: near = the 4 band columns, away = the other 5
    pred = flow.clone()
    pred[0, 0, :, 4:6] = 1.0                             # both edge columns off by 1 px
    m = FlowMetrics(width=1)
    m.update(pred, flow)
    m.update(flow, flow)
    r = m.compute()
    assert (r["n"], r["n_near"], r["n_away"]) == (90, 40, 50)
    assert r["epe_near"] == pytest.approx(10 / 40) and r["epe_away"] == 0 and r["epe"] == pytest.approx(10 / 90)


# ------------------------------------------------------------------------------------------------ filters

def test_constant_flow_is_unchanged_by_both_filters():
    torch.manual_seed(0)
    flow = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(2, 2, 13, 17).contiguous()
    e, image = torch.randn(2, 8, 13, 17), torch.rand(2, 3, 13, 17)
    tol = {"atol": 1e-4, "rtol": 1e-4}                  # the normalisations' ε (1e-6) against small mask sums
    for dilation in (1, (3, 1)):
        torch.testing.assert_close(segaware_flow_filter(flow, e, 5, dilation, lam=2.0, iterations=3), flow, **tol)
        torch.testing.assert_close(bilateral_flow_filter(flow, image, 5, dilation, 10.0, 0.2, iterations=2), flow,
                                   **tol)


def test_zero_lambda_is_a_box_filter_away_from_borders():
    torch.manual_seed(1)
    flow, e = torch.randn(2, 2, 11, 13, dtype=torch.float64), torch.randn(2, 4, 11, 13, dtype=torch.float64)
    y = segaware_flow_filter(flow, e, 3, 1, lam=0.0, iterations=1)
    box = F.conv2d(flow, torch.full((2, 1, 3, 3), 1 / 9, dtype=torch.float64), padding=1, groups=2)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], box[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)   # ε = 1e-6


def test_step_edge_is_kept_by_the_segaware_filter_and_blurred_by_a_box():
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0, :, 8:] = 3.0
    e = torch.zeros(1, 4, 12, 16)
    e[:, 0, :, 8:] = 5.0                                 # an embedding that separates the two sides (L1 distance 5)
    kept = segaware_flow_filter(flow, e, 5, (2, 1), lam=4.0, iterations=3)
    torch.testing.assert_close(kept, flow, atol=1e-4, rtol=0)
    blurred = segaware_flow_filter(flow, e, 5, (2, 1), lam=0.0, iterations=3)
    assert (blurred - flow).abs()[:, 0, :, 6:10].min() > 0.3


# ---------------------------------------------------------------------------------------------- FlowNetS

def test_flownet_shapes_and_gradient():
    torch.manual_seed(0)
    net = flownet_simple(width=0.125, levels=4, batch_norm=True)
    a = torch.rand(2, 3, *SMALL, requires_grad=True)
    b = torch.rand(2, 3, *SMALL)
    out = net(a, b)
    assert out["flow"].shape == (2, 2, *SMALL)
    assert [tuple(f.shape[-2:]) for f in out["flows"]] == [(10, 14), (5, 7), (3, 4)]
    loss = multiscale_epe(out, torch.randn(2, 2, *SMALL), full_weight=1.0)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="levels"):
        flownet_simple(levels=7)
    corr = flownet_simple(width=0.125, levels=4, correlation=True)
    out = corr(a, b)
    assert out["flow"].shape == (2, 2, *SMALL) and len(out["flows"]) == 3
    multiscale_epe(out, torch.randn(2, 2, *SMALL)).backward()
    assert corr.encoder["conv1"][0].weight.grad.abs().sum() > 0


def test_multiscale_targets_stay_in_full_resolution_pixels():
    # a constant 3 px flow is 3 at every level (predictions are in full-resolution px at every scale): a network
    # predicting 3 everywhere has zero loss, one predicting 3 / 2^l (the other convention) does not
    gt = torch.zeros(2, 2, 32, 48)
    gt[:, 0] = 3.0
    gt[:, 1, :, 24:] = -1.0                              # an edge: area-averaged, not subsampled, at coarse levels
    sizes = [(8, 12), (4, 6), (2, 3)]                    # levels 2, 3, 4
    exact = {"flows": [F.adaptive_avg_pool2d(gt, s) for s in sizes]}
    assert float(multiscale_epe(exact, gt)) < 1e-3
    assert torch.allclose(exact["flows"][2][:, 0], torch.full((2, 2, 3), 3.0))
    rescaled = {"flows": [f / 2 ** level for f, level in zip(exact["flows"], (2, 3, 4))]}
    assert float(multiscale_epe(rescaled, gt, weights={2: 1.0, 3: 1.0, 4: 1.0})) > 5
    # and the network's outputs are in those units: div_flow scales every level and the full-resolution flow
    net = flownet_simple(width=0.125, levels=4)
    for m in net.predict.values():
        torch.nn.init.zeros_(m.weight)
        m.bias.data = torch.tensor([3.0, 0.0]) / net.div_flow
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48))
    for f in out["flows"] + [out["flow"]]:
        torch.testing.assert_close(f[:, 0], torch.full_like(f[:, 0], 3.0))


def test_pair_normalisation_makes_the_network_contrast_invariant():
    torch.manual_seed(0)
    net = flownet_simple(width=0.125, levels=3).eval()
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    x = net._inputs(a, b)                                # (B, 6, H, W)
    assert x.view(2, 2, 3, 32, 32).mean((1, 3, 4)).abs().max() < 1e-5   # (B, 2 frames, C, H, W): zero mean per
    #                                                                        channel over both frames
    torch.testing.assert_close(x.std((1, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(net(a, b)["flow"], net(0.2 + 0.1 * a, 0.2 + 0.1 * b)["flow"], atol=1e-4,
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="normalize"):
        FlowNetS(normalize="none")


def test_correlation_peaks_at_the_displacement():
    torch.manual_seed(0)
    f1 = torch.randn(1, 64, 10, 12)
    f2 = torch.roll(f1, shifts=(1, -2), dims=(2, 3))     # f2(x + d) = f1(x) with d = (dx, dy) = (-2, 1)
    c = correlation(f1, f2, 2)                           # (1, 25, 10, 12)
    assert c.shape == (1, 25, 10, 12)
    k = (1 + 2) * 5 + (-2 + 2)                           # channel (dy + m)(2m + 1) + (dx + m)
    assert (c[0, :, 3:-3, 3:-3].argmax(0) == k).all()


def _translated_batch(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pairs of 32x32 bilinear noise (4 px cells) under a global integer translation in [-3, 3]²:
    frame2(p + flow) = frame1(p)."""
    tex = F.interpolate(torch.rand(n, 3, 12, 12, generator=g), size=(48, 48), mode="bilinear", align_corners=False)
    shift = torch.randint(-3, 4, (n, 2), generator=g)    # (dx, dy)
    im2 = torch.stack([tex[i, :, 8 - int(dy):40 - int(dy), 8 - int(dx):40 - int(dx)]
                       for i, (dx, dy) in enumerate(shift.tolist())])
    return tex[..., 8:40, 8:40], im2, shift.float()[:, :, None, None].expand(n, 2, 32, 32)


@pytest.mark.parametrize("corr", [False, True])
def test_flownet_learns_a_global_translation(corr):
    # the sanity check that the first version failed: a few hundred steps must beat zero flow clearly
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = flownet_simple(width=0.125, levels=3, correlation=corr)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(150):
        a, b, f = _translated_batch(g, 8)
        loss = multiscale_epe(net(a, b), f, weights={2: 1.0, 3: 0.5})
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b, f = _translated_batch(torch.Generator().manual_seed(99), 32)
    with torch.no_grad():
        err = float(endpoint_error(net(a, b)["flow"], f).mean())
    assert err < 0.6 * float(f.norm(dim=1).mean())


# -------------------------------------------------------------------------------------------- benchmark

def test_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("segaware_flow_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--iters", "2", "--emb-iters", "2", "--size", "32x48", "--train-pairs", "4", "--val-pairs", "2",
            "--test-pairs", "2", "--timing-images", "1", "--quick-grid", "--run-dir", str(tmp_path),
            "--out", str(tmp_path / "out.json")]
    doc = bench.main(argv)
    for key in ("test", "test_by_near"):
        assert set(doc[key]) == {"unfiltered", "segaware", "bilateral", "segaware_oracle"}
        assert all(k in doc[key]["segaware"] for k in ("epe", "epe_near", "epe_away"))
    assert doc["selection"]["split"] == "val" and doc["selection"]["library_check_ok"]
    assert doc["selection_by_near"]["split"] == "val"
    assert {"lam", "kernel_size", "dilation", "iterations"} <= set(doc["selection"]["segaware"])
    assert {"network", "zero_flow"} <= set(doc["train"]["flow_val"]) and "epe" in doc["test_zero_flow"]["valid"]
    assert (tmp_path / "weights.pt").is_file() and (tmp_path / "out.json").is_file()
    again = bench.main(argv + ["--reuse"])
    assert again["test"]["unfiltered"] == doc["test"]["unfiltered"]
