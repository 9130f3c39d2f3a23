import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from attnseg.nn.pretrained import load_pretrained
from attnseg.nn.resnet import ResNet
from attnseg.nn.vgg import (
    load_vgg16_pretrained,
    vgg16_bn_deconvnet,
    vgg16_classifier_to_conv,
    vgg16_fcn,
    vgg16_largefov,
)

# ---- ResNet output strides -----------------------------------------------------------------------------------

EXPANSION = {18: 1, 34: 1, 50: 4}


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet_feature_sizes(depth, output_stride):
    """Every stride-2 step is 'same'-padded, so a stride-s feature of an H x W input is ceil(H/s) x ceil(W/s)."""
    model = ResNet(depth, output_stride=output_stride).eval()
    e = EXPANSION[depth]
    strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    channels = {"stem": 64, "layer1": 64 * e, "layer2": 128 * e, "layer3": 256 * e, "layer4": 512 * e}
    assert model.out_strides == strides and model.out_channels == channels
    for H, W in [(64, 96), (65, 97)]:
        with torch.no_grad():
            feats = model(torch.randn(1, 3, H, W))
        for name, s in strides.items():
            assert feats[name].shape == (1, channels[name], math.ceil(H / s), math.ceil(W / s)), name


def test_resnet_documented_sizes_by_hand():
    model = ResNet(18, output_stride=8).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 65, 97))
    assert feats["layer4"].shape[-2:] == (9, 13) and feats["layer1"].shape[-2:] == (17, 25)


# ---- load_pretrained -----------------------------------------------------------------------------------------

def tamper(sd: dict, drop: str) -> dict:
    sd = {k: v.clone() for k, v in sd.items() if k != drop}
    sd["bogus.weight"] = torch.randn(3)
    return sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_pretrained_resnet_report(tmp_path, suffix):
    torch.manual_seed(0)
    src = ResNet(18)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # make every tensor differ from a fresh init
    dropped = "layer2.0.conv1.weight"
    sd = tamper(src.state_dict(), dropped)
    path = tmp_path / f"resnet18{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))

    torch.manual_seed(1)
    dst = ResNet(18)
    before = dst.state_dict()[dropped].clone()
    report = load_pretrained(dst, path)
    assert report.missing == [dropped]
    assert report.unexpected == ["bogus.weight"]
    assert report.mismatched == []
    assert sorted(report.matched) == sorted(k for k in src.state_dict() if k != dropped)
    own = dst.state_dict()
    for k in report.matched:
        assert torch.equal(own[k], sd[k]), k
    assert torch.equal(own[dropped], before)  # untouched
    assert "1 missing" in report.summary() and "bogus.weight" in report.summary()


# ---- VGG: torchvision names and net surgery ----------------------------------------------------------------------

# torchvision's vgg16 / vgg16_bn layouts, written out independently of attnseg.nn.vgg
TV_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
TV_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
W = 1 / 8  # scale every channel (names are what matter here)


def torchvision_vgg16_state_dict(batch_norm: bool, width: float = W) -> dict:
    g = torch.Generator().manual_seed(0)
    c = [max(1, round(ch * width)) for ch in CHANNELS]
    fc = round(4096 * width)
    sd, cin = {}, 3
    for idx, cout in zip(TV_BN_CONVS if batch_norm else TV_CONVS, c):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g)
        if batch_norm:
            for name in ("weight", "bias", "running_mean"):
                sd[f"features.{idx + 1}.{name}"] = torch.randn(cout, generator=g)
            sd[f"features.{idx + 1}.running_var"] = torch.rand(cout, generator=g) + 0.5
            sd[f"features.{idx + 1}.num_batches_tracked"] = torch.tensor(100)
        cin = cout
    sd["classifier.0.weight"] = torch.randn(fc, cin * 49, generator=g)
    sd["classifier.0.bias"] = torch.randn(fc, generator=g)
    sd["classifier.3.weight"] = torch.randn(fc, fc, generator=g)
    sd["classifier.3.bias"] = torch.randn(fc, generator=g)
    sd["classifier.6.weight"] = torch.randn(1000, fc, generator=g)
    sd["classifier.6.bias"] = torch.randn(1000, generator=g)
    return sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg16_features_load_by_torchvision_name(tmp_path, suffix):
    sd = tamper(torchvision_vgg16_state_dict(batch_norm=False), drop="features.5.bias")
    path = tmp_path / f"vgg16{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))

    vgg = vgg16_fcn(W)
    report = load_pretrained(vgg, path)  # plain loader: features by name, the classifier does not fit
    assert sorted(report.matched) == sorted(k for k in sd if k.startswith("features."))
    assert report.missing == ["features.5.bias", "fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    assert sorted(report.unexpected) == sorted(["bogus.weight"] + [k for k in sd if k.startswith("classifier.")])
    own = vgg.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in report.matched)

    vgg = vgg16_fcn(W)
    report = load_vgg16_pretrained(vgg, path)  # with net surgery
    assert report.missing == ["features.5.bias"]
    assert sorted(report.unexpected) == ["bogus.weight", "classifier.6.bias", "classifier.6.weight"]
    fc6 = vgg.fc6.weight
    assert torch.equal(fc6, sd["classifier.0.weight"].view(fc6.shape))
    assert torch.equal(vgg.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"])


def test_net_surgery_fc6_equals_the_linear_layer():
    """torchvision flattens pool5 (B, 512, 7, 7) channel-major: the 7x7 conv must give the Linear's output."""
    sd = torchvision_vgg16_state_dict(batch_norm=False)
    conv = vgg16_classifier_to_conv(sd)
    pool5 = torch.randn(2, 64, 7, 7)
    linear = F.linear(pool5.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])  # (2, 512)
    as_conv = F.conv2d(pool5, conv["fc6.weight"], conv["fc6.bias"])  # (2, 512, 1, 1)
    torch.testing.assert_close(as_conv[:, :, 0, 0], linear, rtol=1e-4, atol=1e-4)
    h = torch.randn(2, 512)
    torch.testing.assert_close(F.conv2d(h[:, :, None, None], conv["fc7.weight"], conv["fc7.bias"])[:, :, 0, 0],
                               F.linear(h, sd["classifier.3.weight"], sd["classifier.3.bias"]), rtol=1e-4, atol=1e-4)


def test_vgg16_bn_loads_into_the_deconvnet_encoder(tmp_path):
    sd = torchvision_vgg16_state_dict(batch_norm=True)
    torch.save(sd, tmp_path / "vgg16_bn.pth")
    enc = vgg16_bn_deconvnet(W)
    report = load_vgg16_pretrained(enc, tmp_path / "vgg16_bn.pth")
    assert report.mismatched == []
    assert sorted(report.missing) == sorted(f"{m}.{p}" for m in ("fc6_bn", "fc7_bn")
                                            for p in ("weight", "bias", "running_mean", "running_var"))
    own = enc.state_dict()
    for k, v in sd.items():
        if k.startswith("features."):
            assert torch.equal(own[k], v), k


def test_largefov_fc_layers_are_decimated(tmp_path):
    sd = torchvision_vgg16_state_dict(batch_norm=False)
    save_file(sd, str(tmp_path / "vgg16.safetensors"))
    vgg = vgg16_largefov(W)
    report = load_vgg16_pretrained(vgg, tmp_path / "vgg16.safetensors")
    assert report.missing == [] and report.mismatched == []
    w6 = sd["classifier.0.weight"].view(-1, 64, 7, 7)
    assert vgg.fc6.weight.shape == (128, 64, 3, 3)  # 1024 * W filters, 3x3
    assert torch.equal(vgg.fc6.weight, w6[::4, :, ::3, ::3])
    assert torch.equal(vgg.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"][::4, ::4])
    assert torch.equal(vgg.fc7.bias, sd["classifier.3.bias"][::4])
