import pytest
import torch
from torch import nn

from attnseg.models import create_model
from attnseg.models.flanet import ATTENTION_BLOCKS, FLANet

from .base import ModelTest

SMALL = {"channels": 16, "mid_channels": 16, "aux_mid": 8}


class TestFLANet(ModelTest):
    model_name = "flanet_resnet18"
    kwargs = SMALL


class TestDilatedNonLocal(ModelTest):
    model_name = "dilated_resnet18_nonlocal"
    kwargs = {**SMALL, "sub_sample": True}


class TestDilatedDANet(ModelTest):
    model_name = "dilated_resnet18_danet"
    kwargs = SMALL


class TestDilatedCCNet(ModelTest):
    model_name = "dilated_resnet18_ccnet"
    kwargs = SMALL


def small(attention, seed=0, **kw):
    torch.manual_seed(seed)
    return FLANet(5, depth=18, attention=attention, **{**SMALL, **kw})


def test_deep_stem_dilated_backbone_geometry_and_official_names():
    m = small("fla")
    bb = m.backbone
    assert isinstance(bb.conv1, nn.Sequential) and [type(bb.conv1[i]).__name__ for i in (0, 1, 3, 4, 6)] == [
        "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d"]
    assert bb.conv1[0].stride == (2, 2) and bb.conv1[6].out_channels == 128 and bb.bn1.num_features == 128
    # the official code dilates every block of a stage fully (DeepLab's ResNet halves the first block's)
    assert bb.layer3[0].conv1.dilation == (2, 2) and bb.layer4[0].conv1.dilation == (4, 4)
    assert bb.layer4[1].conv2.dilation == (4, 4) and bb.layer4[0].conv1.stride == (1, 1)
    for size, grid in (((64, 64), (8, 8)), ((37, 53), (5, 7))):
        with torch.no_grad():
            out = m.eval()(torch.randn(1, 3, *size), return_attention=True)
        assert out["attention"]["grid"].tolist() == [list(grid)]
        assert out["attention"]["fla_column"].shape == (1, grid[1], 16, 16)
        assert out["attention"]["fla_row"].shape == (1, grid[0], 16, 16)


def test_head_layout_and_aux_heads():
    m = small("fla").train()
    out = m(torch.randn(2, 3, 48, 40))
    assert set(out["aux"]) == {"layer2", "layer3"} and "aux_weights" not in out  # the engine's 0.4 each
    assert m.out_main[0].scale_factor == 2 and m.out_main[0].mode == "nearest"  # classifier at stride 4
    assert m.out_main[1][0].in_channels == 512 + 16  # cat[layer4, block output]
    assert m.out_aux1[1][0].in_channels == 128 and m.out_aux2[1][0].in_channels == 256
    assert m.out_aux1[1][0].out_channels == 8


@pytest.mark.parametrize("attention", ["nonlocal", "ccnet", "channel"])
def test_peers_at_their_identity_equal_the_base_network(attention):
    """With gamma = 0 (zero BN scale for the non-local block) a peer's head is the base head: the same weights
    give the same logits, so the comparison between blocks is one for one; FLA likewise."""
    base = small("none").eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = base(x)["logits"]
        for att in (attention, "fla"):
            peer = small(att, seed=1).eval()
            missing, unexpected = peer.load_state_dict(base.state_dict(), strict=False)
            assert not unexpected and all(k.startswith("block.") for k in missing)
            torch.testing.assert_close(peer(x)["logits"], ref)


def test_every_block_builds_and_unknown_block_fails():
    for att in ATTENTION_BLOCKS:
        with torch.no_grad():
            out = small(att).eval()(torch.randn(1, 3, 33, 41), return_attention=True)
        assert out["logits"].shape == (1, 5, 33, 41)
    with pytest.raises(ValueError, match="unknown attention block 'spatial'.*fla, none"):
        small("spatial")


def test_registry_depths():
    with torch.device("meta"):
        for d, c4 in ((18, 512), (50, 2048), (101, 2048)):
            m = create_model(f"flanet_resnet{d}", num_classes=19)
            assert m.backbone.depth == d and m.out_main[1][0].in_channels == c4 + 512
            assert m.attention_name == "fla"
            assert create_model(f"dilated_resnet{d}_ccnet", num_classes=19).attention_name == "ccnet"


@pytest.mark.parametrize("attention", ATTENTION_BLOCKS)
def test_attention_memory_estimate_equals_the_maps_returned(attention):
    m = small(attention, sub_sample=attention in ("nonlocal", "ccnet")).eval()
    size = (45, 70)
    assert m.feature_size(*size) == (6, 9)
    with torch.no_grad():
        att = m(torch.randn(2, 3, *size), return_attention=True)["attention"]
    maps = [a for k, a in att.items() if k != "grid"]
    per_recurrence = att["criss_cross"][:, 0] if attention == "ccnet" else None
    returned = sum(a.numel() for a in maps) if per_recurrence is None else per_recurrence.numel()
    assert m.attention_memory_bytes(2, *size, training=False) == 4 * returned
    if attention != "none":
        assert m.attention_memory_bytes(2, *size, training=True) >= 2 * 4 * returned


@pytest.mark.parametrize("attention", ["fla", "ccnet", "danet"])
def test_bf16_autocast_finite(attention):
    m = small(attention).eval()
    for blk in m.block.modules():
        if hasattr(blk, "gamma"):
            blk.gamma.data.fill_(1.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(1, 3, 35, 43) * 3, return_attention=True)
    assert torch.isfinite(out["logits"].float()).all()
    assert all(a.dtype == torch.float32 for k, a in out["attention"].items() if k != "grid")
