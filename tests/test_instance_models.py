"""The two registered proposal-free instance models and their shared contract (``models.instance_base``): the
boundary target against a pixel loop written from its definition, the soft Dice and score helpers by hand, the
flat-map round trip, forward shapes at odd sizes, the losses (value against a float64 reference, gradients,
a tiny fit), ``predict_instances`` in torchvision's form, the registry, and ``cluster_embeddings``'
``split_components``."""

import math

import numpy as np
import pytest
import torch

from attnseg.data.synthetic_instances import nuclei_field
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attnseg.models import INSTANCE_MODELS, MODELS, create_model, model_task
from attnseg.models.instance_base import InstanceModel, boundary_target, instance_scores, soft_dice_loss
from attnseg.nn.instance_grouping import cluster_embeddings

TINY = {"width": 8, "depth": 2}
NAMES = ("unet_watershed_w16", "unet_discriminative_w16")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- boundary_target ----------------------------------------------------------------------------------------------

def brute_boundary(ids: np.ndarray) -> np.ndarray:
    """From the definition: an instance pixel whose 3x3 neighbourhood (inside the image) holds another value
    (another id or the background); a background pixel whose 3x3 neighbourhood holds two different positive ids."""
    H, W = ids.shape
    out = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            v = int(ids[y, x])
            hood = {int(ids[j, i]) for j in range(max(0, y - 1), min(H, y + 2))
                    for i in range(max(0, x - 1), min(W, x + 2))}
            if v > 0:
                out[y, x] = any(u != v for u in hood)
            else:
                out[y, x] = len({u for u in hood if u > 0}) >= 2
    return out


@pytest.mark.parametrize("seed", range(8))
def test_boundary_target_matches_the_pixel_loop(seed):
    rng = np.random.default_rng(seed)
    B, H, W = 3, int(rng.integers(1, 12)), int(rng.integers(1, 14))
    maps = []
    for b in range(B):
        if b == 0:     # scattered ids: many gaps and edges
            m = rng.integers(0, 5, (H, W)) * (rng.random((H, W)) < 0.6)
        else:          # rectangles painted over each other, large ids (the float conversion must stay exact)
            m = np.zeros((H, W), np.int64)
            for _ in range(int(rng.integers(0, 5))):
                y0, x0 = rng.integers(0, H), rng.integers(0, W)
                m[y0:y0 + rng.integers(1, 6), x0:x0 + rng.integers(1, 6)] = int(rng.integers(1, 60000))
        maps.append(m)
    ids = torch.from_numpy(np.stack(maps).astype(np.int64))
    got = boundary_target(ids)
    assert got.shape == (B, H, W) and got.dtype == torch.bool
    for b in range(B):
        np.testing.assert_array_equal(got[b].numpy(), brute_boundary(maps[b]))


def test_boundary_target_by_hand():
    ids = torch.tensor([[[1, 1, 0, 2, 2],
                         [1, 1, 0, 2, 2],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 3]]])
    # the image border is no boundary (corners (0, 0), (0, 4)); the gap column between 1 and 2 is; (2, 2) sees 1
    # and 2 diagonally, (2, 3) and (2, 4) see 2 and 3; (2, 0), (2, 1) and (3, 3) see one id only
    expected = torch.tensor([[[0, 1, 1, 1, 0],
                              [1, 1, 1, 1, 1],
                              [0, 0, 1, 1, 1],
                              [0, 0, 0, 0, 1]]], dtype=torch.bool)
    np.testing.assert_array_equal(boundary_target(ids).numpy(), expected.numpy())
    assert not boundary_target(torch.zeros(1, 4, 4, dtype=torch.long)).any()
    assert not boundary_target(torch.full((1, 4, 4), 7)).any()        # one instance filling the image


# -- soft Dice, scores, flat maps ---------------------------------------------------------------------------------

def test_soft_dice_loss_by_hand():
    logits = torch.zeros(2, 1, 2, 2)
    logits[1] = math.log(3)                                            # sigmoid = 0.75
    target = torch.tensor([[1., 0, 0, 0], [1, 1, 0, 0]]).view(2, 1, 2, 2)
    # image 0: p = 0.5: sum(pt) = 0.5, sum p = 2, sum t = 1 -> 1 - (1 + 1) / (2 + 1 + 1) = 1/2
    # image 1: p = 0.75: sum(pt) = 1.5, sum p = 3, sum t = 2 -> 1 - (3 + 1) / (3 + 2 + 1) = 1/3
    assert soft_dice_loss(logits, target).item() == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-6)
    # eps = 0: 1 - 1/3 and 1 - 3/5
    assert soft_dice_loss(logits, target, eps=0).item() == pytest.approx((2 / 3 + 2 / 5) / 2, abs=1e-6)
    assert soft_dice_loss(torch.full((1, 1, 3, 3), 40.), torch.ones(1, 1, 3, 3)).item() == pytest.approx(0, abs=1e-6)


def test_instance_scores_by_hand():
    ids = np.array([[0, 1, 1], [2, 2, 0], [5, 0, 0]])
    fg = np.array([[0.9, 0.2, 0.4], [1.0, 0.5, 0.7], [0.6, 0.0, 0.1]])
    s = instance_scores(ids, fg)
    assert set(s) == {1, 2, 5}
    assert s[1] == pytest.approx(0.3) and s[2] == pytest.approx(0.75) and s[5] == pytest.approx(0.6)
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in s.items())
    assert instance_scores(np.zeros((3, 3), int), fg) == {}


@pytest.mark.parametrize("name, channels", [("unet_watershed_w16", {"fg": 1, "boundary": 1}),
                                            ("unet_discriminative_w16", {"fg": 1, "embedding": 8})])
def test_map_channels_and_the_flat_round_trip(name, channels):
    model = create_model(name, 1, **TINY)
    assert isinstance(model, InstanceModel) and model.task == "instances"
    assert model.map_channels() == channels
    assert list(model.map_channels()) == list(channels)                  # order matters: the ONNX layout
    out = {k: torch.randn(2, c, 5, 7) for k, c in channels.items()}
    flat = model.flat_maps(out)
    assert flat.shape == (2, sum(channels.values()), 5, 7)
    np.testing.assert_array_equal(flat[:, :1].numpy(), out["fg"].numpy())        # fg first
    back = model.unflat_maps(flat)
    assert list(back) == list(channels)
    for k in channels:
        assert torch.equal(back[k], out[k])
    total = sum(channels.values())
    with pytest.raises(ValueError, match=f"expected {total} channels .*got {total + 1}"):
        model.unflat_maps(torch.zeros(1, total + 1, 4, 4))


def test_discriminative_embedding_dim_is_a_model_option():
    model = create_model("unet_discriminative_w16", 1, embedding_dim=3, **TINY)
    assert model.map_channels() == {"fg": 1, "embedding": 3}
    with pytest.raises(ValueError, match="embedding_dim must be >= 1, not 0"):
        create_model("unet_discriminative_w16", 1, embedding_dim=0, **TINY)


# -- registry --------------------------------------------------------------------------------------------------

def test_registry_names_and_tasks():
    assert set(INSTANCE_MODELS) == {"unet_watershed", "unet_watershed_w16", "unet_discriminative",
                                    "unet_discriminative_w16", "recurrent_attention", "recurrent_attention_nuclei",
                                    "mnc_resnet18", "mnc_resnet18_fpn", "mnc_resnet50_fpn", "sds_resnet18_fpn"}
    assert all(n in MODELS and model_task(n) == "instances" for n in INSTANCE_MODELS)
    assert model_task("fcn8s_resnet18") == "semantic" and model_task("no_such_model") == "semantic"
    # the w16 variants are the base models at width 16 (the base default is 32)
    def width(name):
        return create_model(name, 1, depth=2).net.down[0][0].out_channels
    assert width("unet_watershed_w16") == 16 and width("unet_watershed") == 32
    assert width("unet_discriminative_w16") == 16 and width("unet_discriminative") == 32


@pytest.mark.parametrize("name, what", [("unet_watershed_w16", "fg_boundary_watershed"),
                                        ("unet_discriminative_w16", "discriminative_embedding")])
def test_several_instance_classes_are_refused(name, what):
    with pytest.raises(ValueError, match=f"{what} segments instances of one class; the data has 3 instance classes"):
        create_model(name, 3, **TINY)


# -- forward, loss, gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_at_an_odd_size(name):
    model = create_model(name, 1, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 53))
    assert list(out) == list(model.map_channels())
    for k, c in model.map_channels().items():
        assert out[k].shape == (2, c, 37, 53) and torch.isfinite(out[k]).all()
    dense = model.dense(out, 1)
    assert dense["fg"].shape == (37, 53) and dense["fg"].dtype == np.float32
    assert 0 <= dense["fg"].min() and dense["fg"].max() <= 1
    np.testing.assert_allclose(dense["fg"], torch.sigmoid(out["fg"][1, 0]).numpy(), rtol=1e-6)
    if name.startswith("unet_watershed"):
        np.testing.assert_allclose(dense["boundary"], torch.sigmoid(out["boundary"][1, 0]).numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(dense["embedding"], out["embedding"][1].numpy())


def reference_watershed_loss(fg, bd, ids, boundary_weight=1.0):
    """BCE + soft Dice (eps 1) on each channel, written out in float64 from the formulas."""
    fg_t = (ids > 0).double()[:, None]
    bd_t = torch.from_numpy(np.stack([brute_boundary(m) for m in ids.numpy()])).double()[:, None]

    def bce(z, t):
        p = torch.sigmoid(z)
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()

    def dice(z, t):
        p = torch.sigmoid(z).flatten(1)
        t = t.flatten(1)
        return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    return bce(fg, fg_t) + dice(fg, fg_t) + boundary_weight * (bce(bd, bd_t) + dice(bd, bd_t))


def small_ids(B=2, H=8, W=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((B, H, W), np.int64)
    ids[0, 1:4, 1:5], ids[0, 4:7, 3:7] = 1, 2
    ids[1] = rng.integers(0, 3, (H, W))
    return torch.from_numpy(ids)


def test_watershed_loss_value_and_gradient_against_a_float64_reference():
    model = create_model("unet_watershed_w16", 1, boundary_weight=0.7, **TINY)
    ids = small_ids()
    g = torch.Generator().manual_seed(0)
    fg = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bd = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss, parts = model.loss({"fg": fg, "boundary": bd}, ids)
    ref = reference_watershed_loss(fg, bd, ids, 0.7)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert (parts["fg"] + 0.7 * parts["boundary"]).item() == pytest.approx(loss.item(), rel=1e-6)
    g_fg, g_bd = torch.autograd.grad(loss, (fg, bd))
    r_fg, r_bd = torch.autograd.grad(ref, (fg, bd))
    torch.testing.assert_close(g_fg, r_fg, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g_bd, r_bd, rtol=1e-4, atol=1e-7)


def test_discriminative_loss_value_and_gradient_against_a_float64_reference():
    from attnseg.nn.discriminative_loss import discriminative_loss
    model = create_model("unet_discriminative_w16", 1, embedding_weight=0.5, **TINY)
    ids = small_ids()
    g = torch.Generator().manual_seed(2)
    fg = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss, parts = model.loss({"fg": fg, "embedding": emb}, ids)
    fg_t = (ids > 0).double()[:, None]
    p = torch.sigmoid(fg)
    bce = -(fg_t * torch.log(p) + (1 - fg_t) * torch.log(1 - p)).mean()
    dice = (1 - (2 * (p * fg_t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + fg_t.flatten(1).sum(1) + 1)).mean()
    d_loss, d_parts = discriminative_loss(emb, ids, 0.5, 1.5)          # the paper's deltas, in float64
    ref = bce + dice + 0.5 * d_loss
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["embedding"].item() == pytest.approx(d_loss.item(), rel=1e-5)
    assert parts["fg"].item() == pytest.approx((bce + dice).item(), rel=1e-5)
    assert all(parts[k].item() == pytest.approx(d_parts[k].item(), rel=1e-5, abs=1e-7) for k in d_parts)
    for a, b in zip(torch.autograd.grad(loss, (fg, emb)), torch.autograd.grad(ref, (fg, emb))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_loss_gradcheck_wrt_the_maps(name):
    """The models compute their loss in float32 (``.float()``, for autocast), so the float64 finite differences
    take a step of 1e-2 (the discriminative loss is ~10: float32 rounding over a 1e-3 step is ~1e-3) and are
    compared at float32 tolerances; the float64 references above check the gradients tightly."""
    kwargs = {"embedding_dim": 3} if "discriminative" in name else {}
    model = create_model(name, 1, **kwargs, **TINY)
    ids = small_ids()[:1]
    g = torch.Generator().manual_seed(1)
    inputs = tuple(torch.randn(1, c, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
                   for c in model.map_channels().values())

    def f(*maps):
        return model.loss(dict(zip(model.map_channels(), maps)), ids)[0].double()
    assert torch.autograd.gradcheck(f, inputs, eps=1e-2, atol=5e-4, rtol=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_finite_and_falls_over_a_few_adam_steps(name):
    torch.manual_seed(0)
    image, ids = nuclei_field(3, size=(64, 64), count=(6, 10))
    assert ids.max() >= 2
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255
         - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    y = torch.from_numpy(ids.astype(np.int64))[None]
    model = create_model(name, 1, **TINY).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss, parts = model.loss(model(x[None]), y)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    assert set(parts) >= ({"fg", "boundary"} if "watershed" in name else {"fg", "embedding", "var", "dist", "reg"})


def test_loss_of_an_all_background_batch_is_finite():
    for name in NAMES:
        model = create_model(name, 1, **TINY)
        out = {k: torch.randn(1, c, 8, 8, requires_grad=True) for k, c in model.map_channels().items()}
        loss, _ = model.loss(out, torch.zeros(1, 8, 8, dtype=torch.long))
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in out.values())


# -- predict_instances -----------------------------------------------------------------------------------------

def discs(H=40, W=56):
    yy, xx = np.mgrid[:H, :W]
    gt = np.zeros((H, W), np.int32)
    gt[(yy - 12) ** 2 + (xx - 12) ** 2 <= 49] = 1
    gt[(yy - 26) ** 2 + (xx - 40) ** 2 <= 64] = 2
    return gt


def fake_forward(name, gt, B):
    """Logits the grouping turns into gt: fg +6 inside, -6 outside; boundary -6 (watershed); embeddings one
    constant vector per instance, 3 apart (discriminative)."""
    fg = torch.from_numpy(np.where(gt > 0, 6.0, -6.0)).float()[None, None].repeat(B, 1, 1, 1)
    fg[:, :, gt == 2] = 2.0                                          # sigmoid(2) ~ 0.88: a lower score for 2
    if "watershed" in name:
        return {"fg": fg, "boundary": torch.full_like(fg, -6.0)}
    emb = torch.zeros(B, 8, *gt.shape)
    emb[:, 0][:, torch.from_numpy(gt == 2)] = 3.0
    return {"fg": fg, "embedding": emb}


@pytest.mark.parametrize("name", NAMES)
def test_predict_instances_returns_torchvision_form_consistent_with_ids(name):
    gt = discs()
    model = create_model(name, 1, **TINY)
    model.train()
    model.forward = lambda images: fake_forward(name, gt, images.shape[0])
    res = model.predict_instances(torch.zeros(2, 3, *gt.shape))
    assert model.training                                              # the mode is restored
    assert len(res) == 2
    for r in res:
        assert set(r) == {"boxes", "labels", "scores", "masks", "ids"}
        ids = r["ids"].numpy()
        assert ids.shape == gt.shape
        present = [k for k in np.unique(ids) if k]
        N = len(present)
        assert N == 2
        assert r["boxes"].shape == (N, 4) and r["boxes"].dtype == torch.float32
        assert r["labels"].shape == (N,) and r["labels"].tolist() == [1] * N
        assert r["scores"].shape == (N,) and r["scores"].dtype == torch.float32
        assert ((0 <= r["scores"]) & (r["scores"] <= 1)).all()
        assert r["masks"].shape == (N, *gt.shape) and r["masks"].dtype == torch.bool
        for n, k in enumerate(present):
            m = ids == k
            np.testing.assert_array_equal(r["masks"][n].numpy(), m)
            ys, xs = np.nonzero(m)
            assert r["boxes"][n].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # ids follow raster order: gt 1 is met first; its score is sigmoid(6), gt 2's sigmoid(2)
        np.testing.assert_array_equal(ids, gt)
        assert r["scores"].tolist() == pytest.approx([1 / (1 + math.exp(-6)), 1 / (1 + math.exp(-2))], rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_predict_instances_of_an_empty_prediction(name):
    model = create_model(name, 1, **TINY)
    model.forward = lambda images: fake_forward(name, np.zeros((12, 10), np.int32), images.shape[0])
    (r,) = model.predict_instances(torch.zeros(1, 3, 12, 10))
    assert r["boxes"].shape == (0, 4) and r["masks"].shape == (0, 12, 10) and r["scores"].shape == (0,)
    assert (r["ids"] == 0).all()


def test_discriminative_attention_maps_are_pictures_in_the_unit_range():
    model = create_model("unet_discriminative_w16", 1, **TINY).eval()
    with torch.no_grad():
        maps = model.dense(model(torch.randn(1, 3, 24, 20)))
    pics = model.attention_maps(maps)
    assert list(pics) == ["fg", "embedding_pc1", "embedding_pc2", "embedding_pc3"]
    for v in pics.values():
        assert v.shape == (24, 20) and v.min() >= 0 and v.max() <= 1
    w = create_model("unet_watershed_w16", 1, **TINY)
    assert list(w.attention_maps({"fg": np.zeros((3, 3)), "boundary": np.zeros((3, 3))})) == ["fg", "boundary"]


# -- cluster_embeddings(split_components) ------------------------------------------------------------------------

def test_split_components_separates_far_blobs_that_share_an_embedding():
    H, W = 30, 40
    fg = np.zeros((H, W))
    fg[3:9, 3:9] = 1
    fg[20:27, 30:37] = 1
    emb = np.zeros((4, H, W))                                            # one embedding for both blobs
    emb[:, fg == 0] = 5.0
    joined = cluster_embeddings(emb, fg, split_components=False)
    assert sorted(np.unique(joined).tolist()) == [0, 1]
    np.testing.assert_array_equal(joined > 0, fg > 0)
    split = cluster_embeddings(emb, fg, split_components=True)
    assert sorted(np.unique(split).tolist()) == [0, 1, 2]
    assert (split[3:9, 3:9] == 1).all() and (split[20:27, 30:37] == 2).all()
    assert ((split > 0) == (fg > 0)).all()


def test_split_components_keeps_diagonal_neighbours_together_and_drops_small_pieces():
    fg = np.zeros((20, 20))
    fg[2:6, 2:6] = 1
    fg[6:10, 6:10] = 1                                 # touches the first block at one corner (8-connected)
    fg[15:17, 15:17] = 1                               # 4 px, under min_size 8
    emb = np.zeros((2, 20, 20))
    ids = cluster_embeddings(emb, fg, split_components=True)
    assert sorted(np.unique(ids).tolist()) == [0, 1]
    assert (ids[2:10, 2:10][fg[2:10, 2:10] > 0] == 1).all() and (ids[15:17, 15:17] == 0).all()


def test_the_discriminative_model_splits_components_by_default():
    assert create_model("unet_discriminative_w16", 1, **TINY).post["split_components"] is True
    assert create_model("unet_discriminative_w16", 1, split_components=False, **TINY).post["split_components"] is False
    m = create_model("unet_discriminative_w16", 1, delta_v=0.3, **TINY)
    assert m.post["bandwidth"] == 0.3                                    # bandwidth defaults to delta_v
    assert create_model("unet_discriminative_w16", 1, bandwidth=0.8, **TINY).post["bandwidth"] == 0.8


def test_watershed_post_processing_options_reach_the_grouping():
    m = create_model("unet_watershed_w16", 1, fg_threshold=0.4, seed_threshold=0.8, boundary_threshold=0.2,
                     min_size=3, min_seed=2, **TINY)
    assert m.post == {"fg_threshold": 0.4, "seed_threshold": 0.8, "boundary_threshold": 0.2, "min_size": 3,
                      "min_seed": 2}


def test_post_processing_settings_change_without_retraining():
    from attnseg.models import create_model
    m = create_model("unet_watershed_w16", 1, width=8, depth=2)
    assert m.set_post(seed_threshold="0.6", min_size=3)["seed_threshold"] == 0.6 and m.post["min_size"] == 3
    with pytest.raises(ValueError, match="no post-processing setting seed_thresh; its settings: .*seed_threshold"):
        m.set_post(seed_thresh=0.5)
    with pytest.raises(ValueError, match="min_size='x' is not a int"):
        m.set_post(min_size="x")
    d = create_model("unet_discriminative_w16", 1, width=8, depth=2)
    assert d.set_post(split_components="false")["split_components"] is False
