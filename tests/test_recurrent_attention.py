"""Ren & Zemel's recurrent attention (``models.recurrent_attention``) and its losses (``nn.instance_matching``):
soft IoU against loops, the matching against brute force over permutations, the monotone score loss against a
loop and in float64 gradcheck, the greedy pick, ground-truth masks and boxes, the scheduled-sampling probabilities,
the per-timestep batch norm, the reset of the glimpse LSTM, teacher forcing of the canvas, output masking, the
filter-bank re-projection, the grouping into an id map, the angle target, bf16 against fp32, and the refusals."""

import itertools
import math

import numpy as np
import pytest
import torch

from attnseg.models import create_model
from attnseg.models.recurrent_attention import angle_target, knob_probability
from attnseg.models.recurrent_attention_parts import ConvStack, PerStepBatchNorm
from attnseg.nn.gaussian_attention import attention_banks, filterbank_write, ren_zemel_box_params
from attnseg.nn.instance_matching import (
    box_masks,
    greedy_pick,
    gt_masks,
    hungarian_match,
    mask_boxes,
    matched_iou_loss,
    monotone_score_loss,
    soft_iou,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(image_size=[64, 64], steps=4, filter_size=16)


def small(**kw):
    torch.manual_seed(0)
    return create_model("recurrent_attention", 1, **{**SMALL, **kw})


def scene(seed=0, n=3, size=64):
    """(1, 3, size, size) image and (1, size, size) ids of n rectangles of different sizes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(1, size, size, dtype=torch.int64)
    for k in range(n):
        y, x = 4 + 18 * k % (size - 20), 6 + 14 * k % (size - 20)
        ids[0, y:y + 8 + 3 * k, x:x + 10 + 2 * k] = k + 1
    img = torch.randn(1, 3, size, size, generator=g) * 0.1 + (ids > 0).float()[:, None]
    return img, ids


# -- losses ----------------------------------------------------------------------------------------------------------
def test_soft_iou_against_loops():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 5, 4, generator=g), (torch.rand(2, 2, 5, 4, generator=g) > 0.5).float()
    got = soft_iou(a, b)
    for i in range(2):
        for t in range(3):
            for j in range(2):
                x, y = a[i, t].double(), b[i, j].double()
                ref = (x * y).sum() / (x + y - x * y + 1e-5).sum()
                assert got[i, t, j].item() == pytest.approx(ref.item(), rel=1e-5)
    assert soft_iou(b[:, :1], b[:, :1])[0, 0, 0].item() == pytest.approx(1.0, abs=1e-3)


def brute_force(iou: np.ndarray, n: int) -> float:
    """The best total IoU over every one-to-one assignment of the first min(T, n) outputs to the n ground truths."""
    T = iou.shape[0]
    rows = min(T, n)
    best = 0.0
    for cols in itertools.permutations(range(n), rows):
        best = max(best, sum(iou[t, c] for t, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_match_is_the_best_assignment(seed):
    rng = np.random.default_rng(seed)
    T, N = 5, 4
    iou = torch.from_numpy(rng.random((3, T, N)).astype(np.float32))
    counts = torch.tensor([4, 2, 0])
    m = hungarian_match(iou, counts)
    assert ((m.sum(2) <= 1) & (m.sum(1)[:, None] <= 1).all(-1, keepdim=True)).all()
    for b, n in enumerate(counts.tolist()):
        assert m[b, n:].sum() == 0 and m[b, :, n:].sum() == 0           # rows and columns beyond N_b masked
        assert m[b].sum() == min(T, n)
        got = float((m[b] * iou[b]).sum())
        assert got == pytest.approx(brute_force(iou[b].numpy(), n), abs=1e-5)


def test_matching_more_ground_truth_than_steps():
    iou = torch.tensor([[[0.1, 0.9, 0.2], [0.8, 0.7, 0.1]]])          # T = 2 outputs, N = 3
    m = hungarian_match(iou, torch.tensor([3]))
    assert m.tolist() == [[[0, 1, 0], [1, 0, 0]]]
    assert matched_iou_loss(iou, m).item() == pytest.approx(-(0.9 + 0.8) / 2)


def test_matched_iou_loss_of_a_perfect_permuted_prediction_is_minus_one():
    _, ids = scene(n=3)
    gt, counts = gt_masks(ids)
    pred = torch.cat([gt[:, [2, 0, 1]], torch.zeros_like(gt[:, :1])], 1)   # permuted, then an empty step
    iou = soft_iou(pred, gt)
    assert matched_iou_loss(iou, hungarian_match(iou, counts)).item() == pytest.approx(-1.0, abs=1e-3)  # ε per pixel


def score_loss_loop(s, y, eps=1e-5):
    B, T = s.shape
    total = 0.0
    for b in range(B):
        for t in range(T):
            lo = min(s[b, :t + 1].tolist())
            hi = max(s[b, t:].tolist())
            yt = float(y[b, t])
            total -= yt * math.log(lo + eps) + (1 - yt) * math.log(1 - hi + eps)
    return total / (B * T)


def test_monotone_score_loss_against_a_loop_and_its_gradient():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(3, 6, generator=g) * 0.98 + 0.01
    y = (torch.arange(6)[None] < torch.tensor([[2], [6], [0]])).float()
    assert monotone_score_loss(s, y).item() == pytest.approx(score_loss_loop(s.double(), y.double()), rel=1e-5)
    # an increase is penalised: the target 1,1,0 scored 0.9, 0.2, 0.1 vs 0.9, 0.8, 0.1
    lo = monotone_score_loss(torch.tensor([[0.9, 0.8, 0.1]]), torch.tensor([[1.0, 1, 0]]))
    hi = monotone_score_loss(torch.tensor([[0.2, 0.8, 0.1]]), torch.tensor([[1.0, 1, 0]]))
    assert hi > lo
    sd = (torch.rand(2, 5, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    yd = (torch.arange(5)[None] < torch.tensor([[3], [1]])).double()
    assert torch.autograd.gradcheck(lambda x: monotone_score_loss(x, yd), (sd,))


def test_soft_iou_gradcheck():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 2, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.rand(1, 3, 4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: soft_iou(x, b), (a,))


def test_greedy_pick_skips_used_and_returns_minus_one_when_none_is_left():
    iou = torch.tensor([[0.2, 0.9, 0.5], [0.1, 0.2, 0.3]])
    used = torch.tensor([[False, True, False], [True, True, True]])
    assert greedy_pick(iou, used).tolist() == [2, -1]


def test_gt_masks_sorted_by_area_and_padded():
    ids = torch.zeros(2, 8, 8, dtype=torch.int64)
    ids[0, :2, :2] = 5                       # 4 px
    ids[0, 4:, 4:] = 2                       # 16 px
    ids[1, 0, 0] = 1
    m, counts = gt_masks(ids)
    assert counts.tolist() == [2, 1] and m.shape == (2, 2, 8, 8)
    assert m[0, 0].sum() == 16 and m[0, 1].sum() == 4 and m[1, 1].sum() == 0
    m2, c2 = gt_masks(ids, max_count=1)
    assert c2.tolist() == [1, 1] and m2[0, 0].sum() == 16


def test_mask_boxes_padding_and_box_masks():
    m = torch.zeros(1, 2, 40, 40)
    m[0, 0, 10:20, 5:35] = 1                 # 10 x 30
    boxes = mask_boxes(m, torch.tensor([1]), pad_ratio=0.2, pad_min=3.0)
    # each side (the code's get_gt_box): y max(0.2·10, 3) = 3; x 0.2·30 = 6, clipped to the image
    assert boxes[0, 0].tolist() == pytest.approx([7, 0, 23, 40])
    assert boxes[0, 1].tolist() == [0, 0, 0, 0]
    bm = box_masks(boxes[0, :1], 40, 40)[0]
    assert bm.sum() == 16 * 40 and bm[7, 0] == 1 and bm[6, 0] == 0 and bm[22, 39] == 1 and bm[23, 39] == 0


# -- scheduled sampling ----------------------------------------------------------------------------------------------
def test_knob_probability():
    assert knob_probability(100, 3000, 700, t=0) == 1.0                        # before the offset
    assert knob_probability(3700, 3000, 700, t=0) == pytest.approx(0.5)        # one half-life
    assert knob_probability(4400, 3000, 700, t=0, timescale=False) == pytest.approx(0.25)
    # τ_t = 1 + log(1 + 3t): later timesteps stay teacher-forced longer, capped at 1
    assert knob_probability(6500, 3000, 700, t=2) == pytest.approx(0.5 ** 5 * (1 + math.log(7)))
    assert knob_probability(3700, 3000, 700, t=20) == 1.0
    assert knob_probability(0, -50000, 700, t=0) < 1e-20                       # CVPPP's box knob: never
    m = small(scheduled_sampling=False)
    assert m.knob(3000, 0) == 0.0


# -- the networks ----------------------------------------------------------------------------------------------------
def test_per_step_batch_norm_keeps_one_set_per_timestep():
    bn = PerStepBatchNorm(2, steps=3)
    bn.train()
    a, b = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 5, 5) * 3 + 7
    bn(a, 0)
    bn(b, 1)
    m0, m1, m2 = (bn.norms[i].running_mean for i in range(3))
    assert torch.allclose(m0, 0.1 * a.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(m1, 0.1 * b.mean((0, 2, 3)), atol=1e-6)
    assert torch.equal(m2, torch.zeros(2))
    bn(b, 7)                                                                   # beyond T: the last copy
    assert not torch.equal(bn.norms[2].running_mean, torch.zeros(2))
    bn.eval()
    assert not torch.allclose(bn(a, 0), bn(a, 1))
    stack = ConvStack(3, (4, 4), (1, 2), steps=2)
    assert len(stack.norms[0].norms) == 2


def test_glimpse_lstm_starts_from_zero_at_every_timestep():
    m = small(iterations=3)
    states = []
    m.box.lstm.register_forward_pre_hook(lambda mod, args: states.append(args[1]))
    m.eval()
    img, _ = scene()
    with torch.no_grad():
        m(img)
    assert len(states) == SMALL["steps"] * 3
    for t in range(SMALL["steps"]):
        h, c = states[3 * t]
        assert torch.equal(h, torch.zeros_like(h)) and torch.equal(c, torch.zeros_like(c))
    assert states[1][0].abs().sum() > 0                                        # carried within a timestep


def canvases(model, img, ids=None):
    """The canvas channel the box network sees at each timestep."""
    seen = []
    model.box.cnn.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 3].detach().clone()))
    out = model(img, targets=ids)
    return seen, out


def test_teacher_forcing_fills_the_canvas_with_ground_truth_masks():
    img, ids = scene(n=3)
    m = small(phase="box")
    m.train()
    seen, out = canvases(m, img, ids)
    assert seen[0].abs().sum() == 0
    gt, _ = gt_masks(ids)
    for t in (1, 2, 3):
        c = seen[t][0]
        on = c > 0
        covered = gt[0].sum(0) > 0
        assert on.sum() > 0 and not (on & ~covered).any()                      # only ground-truth pixels
        assert (c[on] >= 0.7 - 1e-6).all() and (c[on] <= 1).all()              # mask · (1 − U(0, 0.3))
        # each step adds exactly one more whole instance
        n_inst = sum(bool((on & (gt[0, j] > 0)).any()) for j in range(3))
        assert n_inst == t and all((on[gt[0, j] > 0]).all() or not on[gt[0, j] > 0].any() for j in range(3))
    assert "box_masks" in out and out["masks"].shape == (1, 4, 64, 64)


def test_without_scheduled_sampling_the_canvas_is_the_models_own_output():
    img, ids = scene(n=3)
    m = small(scheduled_sampling=False)
    m.train()
    seen, out = canvases(m, img, ids)
    own = torch.cummax(out["masks"].detach(), 1).values                        # c_t = max over steps ≤ t
    for t in range(1, 4):
        assert torch.allclose(seen[t][0], own[0, t - 1], atol=1e-6)


def test_output_masking_and_canvas_at_test_time():
    img, _ = scene(n=3)
    m = small()
    m.eval()
    with torch.no_grad():
        seen, out = canvases(m, img)
    masks = out["masks"][0]
    for t in range(1, 4):
        assert (masks[t] <= 1 - seen[t][0] + 1e-6).all()                       # y_t ← (1 − c_{t−1}) y_t
    m2 = small(output_masking=False)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        raw = m2(img)["masks"][0]
    assert torch.allclose(raw[0], masks[0], atol=1e-6)                          # step 0: an empty canvas
    assert out["glimpses"].shape == (1, 4, 3, 16, 16) and out["scores"].shape == (1, 4)


def test_reprojection_puts_the_patch_in_its_box():
    """ỹ = F_Yᵀ p F_X: a uniform patch lands inside the attention box (pdf filters, σ² = δ/K)."""
    H = W = 96
    K = 24
    raw = torch.tensor([[-0.25, 0.5, math.log(30 / 96), math.log(20 / 96), 0, 0, 0]])
    params = ren_zemel_box_params(raw, H, W, K)
    Fy, Fx = attention_banks(params, H, W, K, "ren_zemel", "pdf")
    y = filterbank_write(torch.ones(1, 1, K, K), Fy, Fx)[0, 0]
    cy, cx = (1 - 0.25) * 48, (1 + 0.5) * 48                                  # 36, 72
    inside = y[int(cy - 17):int(cy + 17), int(cx - 12):int(cx + 12)].sum()
    assert inside / y.sum() > 0.97
    # the level inside is about (K / (δ + 1))² (pdf filters are not row-normalised)
    assert y[int(cy), int(cx)].item() == pytest.approx((K / 31) * (K / 21), rel=0.1)
    # and the model maps a patch of 2 to y_t = sigmoid(e² ỹ − 5) ≈ 1 there, ≈ 0 far from the box
    ys = torch.sigmoid(math.exp(2) * 2 * y - 5)
    assert ys[int(cy), int(cx)] > 0.99 and ys[0, 0] < 0.01


def test_group_keeps_steps_until_the_score_drops():
    m = small(min_size=3)
    masks = np.zeros((4, 8, 8), np.float32)
    masks[0, :4, :4] = 0.9
    masks[1, 4:, 4:] = 0.8
    masks[1, :4, :4] = 0.5                                                      # loses to step 0 there
    masks[2, 0, 7] = 0.9                                                        # 1 px: under min_size
    masks[2, 4:, :4] = 0.2                                                      # under the 0.3 threshold
    masks[3, :, :] = 0.99                                                       # after the stop
    ids, scores = m.group({"masks": masks, "scores": np.array([0.9, 0.8, 0.7, 0.4, ], np.float32)})
    assert (ids[:4, :4] == 1).all() and (ids[4:, 4:] == 2).all()
    assert ids[0, 7] == 0 and (ids[4:, :4] == 0).all()
    assert scores == {1: pytest.approx(0.9), 2: pytest.approx(0.8)}
    ids, scores = m.group({"masks": masks, "scores": np.array([0.3, 0.9, 0.9, 0.9], np.float32)})
    assert not ids.any() and scores == {}


def test_predict_instances_and_other_input_sizes():
    img, _ = scene(n=2, size=80)
    m = small()
    res = m.predict_instances(img)[0]
    assert res["ids"].shape == (80, 80) and res["masks"].shape[1:] == (80, 80)
    out = m.eval()(img)
    assert out["masks"].shape == (1, 4, 80, 80) and out["boxes"].shape == (1, 4, 4)
    flat = m.flat_maps(out)
    back = m.unflat_maps(flat)
    assert torch.equal(back["masks"], out["masks"]) and torch.allclose(back["scores"], out["scores"])


def test_losses_of_both_phases_and_their_gradients():
    img, ids = scene(n=3)
    for phase, parts in (("box", {"box", "score"}), ("full", {"box", "score", "segm"})):
        m = small(phase=phase)
        m.train()
        out = m(img, targets=ids)
        loss, got = m.loss(out, ids)
        assert set(got) == parts and torch.isfinite(loss)
        loss.backward()
        assert m.box.head.weight.grad.abs().sum() > 0
        assert (m.decoder.deconvs[0].weight.grad is not None) == (phase == "full")


def test_no_box_network_ablation_reads_the_whole_image():
    img, ids = scene(n=2)
    m = small(box_network=False)
    assert m.box is None
    m.eval()
    out = m(img)
    assert torch.allclose(out["boxes"][0, 0], torch.tensor([0.0, 0.0, 64.0, 64.0]))
    m.train()
    loss, _ = m.loss(m(img, targets=ids), ids)
    assert torch.isfinite(loss)


def test_preprocess_adds_fg_and_angle_inputs_and_their_loss():
    img, ids = scene(n=2)
    m = small(preprocess=True)
    assert m.box.cnn.convs[0].in_channels == 3 + 1 + 9
    m.train()
    loss, parts = m.loss(m(img, targets=ids), ids)
    assert "preprocess" in parts and torch.isfinite(loss)


def test_angle_target_against_a_loop():
    ids = torch.zeros(1, 9, 11, dtype=torch.int64)
    ids[0, 1:8, 2:9] = 3
    got = angle_target(ids)
    ys, xs = np.nonzero(ids[0].numpy())
    cy, cx = ys.mean(), xs.mean()
    for y in range(9):
        for x in range(11):
            if ids[0, y, x] == 0:
                assert got[0, y, x] == -1
                continue
            theta = math.atan2(y - cy, x - cx) + math.pi / 8                 # the code: angle of p − centroid
            assert got[0, y, x] == math.floor((theta + math.pi) * 8 / (2 * math.pi)) % 8
    assert set(got[0][ids[0] > 0].tolist()) == set(range(8))                   # every direction occurs
    # by hand: the centroid is (4, 5); right of it θ = 0 -> floor(4.5) = 4, below it θ = π/2 -> floor(6.5) = 6,
    # left of it θ = π -> floor(8.5) mod 8 = 0
    assert got[0, 4, 7] == 4 and got[0, 6, 5] == 6 and got[0, 4, 3] == 0


def test_bf16_autocast_matches_fp32():
    img, ids = scene(n=3)
    m = small()
    m.eval()
    with torch.no_grad():
        ref = m(img)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(img)
    assert low["masks"].dtype == torch.float32 and torch.isfinite(low["masks"]).all()
    assert (low["masks"] - ref["masks"]).abs().max() < 0.1
    assert (low["scores"] - ref["scores"]).abs().max() < 0.05
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(img, targets=ids)
    loss, _ = m.loss(out, ids)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "vgg"}, "layout 'vgg' unknown"),
    ({"phase": "boxes"}, "phase 'boxes' unknown"),
    ({"phase": "box", "box_network": False}, "cannot be combined"),
    ({"steps": 0}, "steps (T) must be >= 1"),
    ({"image_size": [60, 64]}, "multiple of the cvppp box CNN's stride 32"),
    ({"filter_size": 20}, "filter_size 20 must be a multiple"),
    ({"iterations": 0}, "at least 1 iteration"),
    ({"image_size": 64}, "image_size must be [H, W]"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError) as e:
        create_model("recurrent_attention", 1, **{**SMALL, **kwargs})
    assert message in str(e.value)


def test_one_class_only():
    with pytest.raises(ValueError, match="one class"):
        create_model("recurrent_attention", 3, **SMALL)


def test_step_pictures_strip_frames_and_gif():
    import io

    from PIL import Image

    from attnseg.viz.recurrent_steps import CAPTION, CELL, gif_bytes, step_frames, step_strip
    img, _ = scene(n=3)
    m = small()
    m.eval()
    with torch.no_grad():
        maps = m.dense(m(img), 0)
    maps["scores"] = np.array([0.9, 0.8, 0.3, 0.2], np.float32)               # two kept, the third stops
    ids, _ = m.group(maps)
    image = np.full((64, 64, 3), 90, np.uint8)
    strip = step_strip(image, maps, ids, m.found_steps(maps["scores"]))
    # 3 step columns (2 kept + the stop) and the instance map, 4 rows of cells under a caption
    assert strip.shape[0] == 4 * CELL + CAPTION and strip.shape[1] == 52 + 4 * CELL + 3 * 4
    frames = step_frames(image, maps, ids, 2)
    assert len(frames) == 4 and {f.shape for f in frames} == {(CELL + CAPTION, 4 * CELL, 3)}
    # the box of step 1 is drawn in its instance colour on the first cell, the stopped step's in grey
    first = frames[0][CAPTION:, :CELL]
    assert (np.abs(first.astype(int) - 90).sum(-1) > 60).any()
    gif = Image.open(io.BytesIO(gif_bytes(frames)))
    assert gif.format == "GIF" and gif.n_frames == 4
