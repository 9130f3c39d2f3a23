"""attnseg.model_info / `attnseg info`: FLOPs against hand counts and against FlopCounterMode on real tensors,
parameter counts, the attention blocks' map memory by module path, and bad input through the CLI."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnseg.attention import NonLocalBlock
from attnseg.cli import main as cli
from attnseg.model_info import count_flops, model_info, parse_size
from attnseg.models import create_model


def test_single_conv_flops_by_hand():
    """A k x k convolution, same padding: 2 * Cin * Cout * k^2 * H * W (a multiply-add = 2 FLOPs; the bias is not
    counted), on meta and on real tensors."""
    cin, cout, k, H, W = 3, 8, 3, 10, 12
    expected = 2 * cin * cout * k * k * H * W
    conv = nn.Conv2d(cin, cout, k, padding=1)
    assert count_flops(conv, torch.zeros(1, cin, H, W))[0] == expected
    with torch.device("meta"):
        meta_conv = nn.Conv2d(cin, cout, k, padding=1)
    assert count_flops(meta_conv, torch.empty(2, cin, H, W, device="meta"))[0] == 2 * expected  # batch 2


def test_small_network_flops_by_hand():
    """conv 3x3 stride 2 (3 -> 4), ReLU, conv 1x1 (4 -> 5): the output grid is ceil(H/2) x ceil(W/2)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1))
    h, w = 5, 6  # of a 9x11 input
    total, by_module = count_flops(net, torch.zeros(1, 3, 9, 11))
    assert total == 2 * 3 * 4 * 9 * h * w + 2 * 4 * 5 * h * w
    assert by_module == {"0": 2 * 3 * 4 * 9 * h * w, "2": 2 * 4 * 5 * h * w}


def test_nonlocal_block_flops_by_hand():
    """theta, phi, g (1x1, C -> C') and the output 1x1 (C' -> C), then q @ k (HW x C' x HW) and A @ v."""
    C, ci, H, W = 16, 8, 6, 7
    N = H * W
    blk = NonLocalBlock(C).eval()
    total, _ = count_flops(blk, torch.zeros(1, C, H, W))
    convs = 3 * 2 * C * ci * N + 2 * ci * C * N
    attention = 2 * N * ci * N + 2 * N * N * ci
    assert total == convs + attention


def test_fcn8s_meta_count_equals_real_tensors():
    """model_info counts on the meta device; the same forward on real CPU tensors gives the same FLOPs."""
    info = model_info("fcn8s_resnet18", size=(64, 80), num_classes=11)
    assert info["device"] == "meta"
    torch.manual_seed(0)
    model = create_model("fcn8s_resnet18", num_classes=11).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 64, 80))
    assert info["flops"] == counter.get_total_flops() > 0
    assert info["gflops"] == round(counter.get_total_flops() / 1e9, 3)
    assert info["params"] == sum(p.numel() for p in model.parameters()) == 11_189_074
    assert info["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < info["activation_memory_bytes"]
    assert "2 FLOPs" in info["flops_note"]
    assert info["attention_blocks"] == []


def test_parameter_count_of_options():
    """Model options reach the builder: FLANet-ResNet-18 with a 256-wide head has fewer parameters."""
    wide = model_info("flanet_resnet18", size=(32, 32), num_classes=11)
    narrow = model_info("flanet_resnet18", size=(32, 32), num_classes=11, channels=256, mid_channels=256)
    with torch.device("meta"):
        ref = create_model("flanet_resnet18", num_classes=11, channels=256, mid_channels=256)
    assert narrow["params"] == sum(p.numel() for p in ref.parameters()) < wide["params"]
    assert narrow["model_kwargs"] == {"channels": 256, "mid_channels": 256}


def test_attention_block_memory_by_module_path():
    """The non-local network: one block at path ``block`` (AttentionThenConv) with the NonLocalBlock as its part,
    on the stride-8 grid; the figures are the blocks' own memory_bytes."""
    info = model_info("dilated_resnet18_nonlocal", size=(64, 80), num_classes=5, channels=64, mid_channels=32)
    (blk,) = info["attention_blocks"]
    assert blk["path"] == "block" and blk["type"] == "AttentionThenConv"
    assert blk["input"] == [1, 64, 8, 10] and blk["calls"] == 1
    n = 8 * 10
    assert blk["inference_bytes"] == n * n * 4 and blk["training_bytes"] == 2 * n * n * 4
    (part,) = blk["parts"]
    assert part["path"] == "block.attention" and part["type"] == "NonLocalBlock"
    assert part["inference_bytes"] == n * n * 4


def test_fla_and_danet_block_memory():
    fla = model_info("flanet_resnet18", size=(64, 80), num_classes=5, channels=64, mid_channels=32, batch=2)
    (blk,) = fla["attention_blocks"]
    assert (blk["path"], blk["type"], blk["input"]) == ("block", "FullyAttentionalBlock", [2, 64, 8, 10])
    assert blk["inference_bytes"] == 2 * (8 + 10) * 64 * 64 * 4 and blk["parts"] == []
    with torch.device("meta"):
        m = create_model("flanet_resnet18", num_classes=5, channels=64, mid_channels=32)
    assert blk["training_bytes"] == m.attention_memory_bytes(2, 64, 80, training=True)
    danet = model_info("dilated_resnet18_danet", size=(64, 80), num_classes=5, channels=64, mid_channels=32)
    (blk,) = danet["attention_blocks"]
    parts = {p["path"]: p for p in blk["parts"]}
    assert set(parts) == {"block.pam", "block.cam"}
    assert parts["block.pam"]["inference_bytes"] == 80 * 80 * 4
    assert parts["block.cam"]["inference_bytes"] == 64 * 64 * 4
    assert blk["inference_bytes"] == 80 * 80 * 4 + 64 * 64 * 4
    none = model_info("dilated_resnet18_none", size=(64, 80), num_classes=5, channels=64, mid_channels=32)
    assert none["attention_blocks"] == []  # its head's block holds no map


def test_parse_size():
    assert parse_size("360x480") == (360, 480) == parse_size("360,480") == parse_size((360, 480))
    assert parse_size("64") == (64, 64)
    for bad in ("0x4", "ax3", "1x2x3", "", "-3x4"):
        with pytest.raises(ValueError, match="--size takes HxW"):
            parse_size(bad)


def test_cli_info_text_and_json(capsys):
    assert cli(["info", "dilated_resnet18_ccnet", "--size", "64x80", "--num-classes", "5", "--set", "channels=64",
                "--set", "mid_channels=32"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs" in out and "2 FLOPs" in out and "activation memory" in out
    assert "block (AttentionThenConv) on 1x64x8x10" in out and "block.attention (CrissCrossAttention)" in out
    assert cli(["info", "fcn8s_resnet18", "--size", "32x48", "--batch", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["input"] == [2, 3, 32, 48] and doc["num_classes"] == 21 and doc["params"] > 0


@pytest.mark.parametrize("argv, message", [
    (["info", "no_such_model"], "unknown model 'no_such_model'; available: attention_to_scale"),
    (["info", "fcn8s_resnet18", "--size", "360x"], "--size takes HxW"),
    (["info", "fcn8s_resnet18", "--size", "0x480"], "--size takes HxW"),
    (["info", "fcn8s_resnet18", "--num-classes", "zero"], "--num-classes takes an integer >= 1"),
    (["info", "fcn8s_resnet18", "--batch", "0"], "--batch takes an integer >= 1"),
    (["info", "fcn8s_resnet18", "--set", "bogus=1"], "has no option bogus"),
    (["info", "fcn8s_resnet18", "--set", "bogus"], "is not key=value"),
])
def test_cli_info_bad_input(capsys, argv, message):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnseg: error: ") and message in err
    assert "Traceback" not in err


def test_falls_back_to_the_cpu_where_meta_fails(monkeypatch):
    """An operator that reads values cannot run on meta: the counts come from one CPU forward instead, and say so."""
    import attnseg.model_info as mi
    meta = mi.model_info("fcn32s_resnet18", size=(32, 48), num_classes=3)
    original = mi._count

    def no_meta(model, x):
        if x.device.type == "meta":
            raise NotImplementedError("reads values")
        return original(model, x)

    monkeypatch.setattr(mi, "_count", no_meta)
    cpu = mi.model_info("fcn32s_resnet18", size=(32, 48), num_classes=3)
    assert cpu["device"] == "cpu" and "reads values" in cpu["meta_failed"]
    assert (cpu["flops"], cpu["params"]) == (meta["flops"], meta["params"])
    assert "counted on the CPU" in mi.format_info(cpu)
