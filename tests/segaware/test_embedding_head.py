import pytest
import torch

from attnseg.nn.embedding_head import EmbeddingHead


def test_shapes_taps_and_gradients_at_odd_sizes():
    torch.manual_seed(0)
    head = EmbeddingHead(dim=8, width=0.125)
    x = torch.randn(2, 3, 37, 50, requires_grad=True)
    e = head(x)
    assert e.shape == (2, 8, 37, 50) and torch.isfinite(e).all()
    assert head.project.in_channels == 3 + 8 + 16 + 32
    e.square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    small = EmbeddingHead(dim=4, width=0.125, taps=("rgb", "conv1"))
    assert small(x).shape == (2, 4, 37, 50) and small.project.in_channels == 3 + 8
    with pytest.raises(ValueError, match="taps"):
        EmbeddingHead(taps=("conv9",))


def test_torchvision_vgg16_names_and_batch_independence():
    head = EmbeddingHead().eval()
    names = {k for k in head.state_dict() if k.startswith("features.")}
    expected = {f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14) for p in ("weight", "bias")}
    assert names == expected
    assert head.features[0].weight.shape == (64, 3, 3, 3) and head.features[14].weight.shape == (256, 256, 3, 3)
    small = EmbeddingHead(dim=4, width=0.125).eval()
    x = torch.randn(3, 3, 20, 24)
    y = x.clone()
    y[1:] = torch.randn_like(y[1:])
    with torch.no_grad():
        torch.testing.assert_close(small(x)[0], small(y)[0])


def test_rgb_only_is_a_pixelwise_linear_map():
    torch.manual_seed(1)
    head = EmbeddingHead(dim=5, taps=("rgb",))
    x = torch.randn(1, 3, 6, 7)
    ref = torch.einsum("oc,bchw->bohw", head.project.weight[:, :, 0, 0], x) + head.project.bias[:, None, None]
    torch.testing.assert_close(head(x), ref)
