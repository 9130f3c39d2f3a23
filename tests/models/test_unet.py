"""The instance U-Net: any input size, the heads' shapes, gradients reach the first layer, and it can fit a
single nucleus field (the heads learn)."""

import pytest
import torch

from attnseg.models.unet import UNet


@pytest.mark.parametrize("hw", [(32, 48), (37, 53), (16, 16)])
def test_any_size_and_heads(hw):
    net = UNet(width=4, depth=3, embedding_dim=5).eval()
    out = net(torch.randn(2, 3, *hw))
    assert out["fg"].shape == (2, 1, *hw) and out["boundary"].shape == (2, 1, *hw)
    assert out["embedding"].shape == (2, 5, *hw)
    assert "embedding" not in UNet(width=4, depth=2, embedding_dim=0).eval()(torch.randn(1, 3, *hw))


def test_gradients_and_a_tiny_fit():
    from attnseg.data.synthetic_instances import nuclei_field
    torch.manual_seed(0)
    image, ids = nuclei_field(0, size=(32, 32), count=(4, 6))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    target = torch.from_numpy((ids > 0).astype("float32"))[None, None]
    net = UNet(width=4, depth=2, embedding_dim=0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)["fg"], target)
        opt.zero_grad()
        loss.backward()
        first = first if first is not None else loss.item()
        assert net.down[0][0].weight.grad.abs().sum() > 0
        opt.step()
    assert loss.item() < 0.5 * first


def test_group_norm_makes_an_image_independent_of_its_batch_and_of_train_or_eval():
    """The reason for norm="group" (DSB2018 mixes dark and bright images): an image's output is the same alone or
    in a batch with a very different image, in training and in eval mode; batch norm's is not."""
    torch.manual_seed(0)
    a = torch.randn(1, 3, 32, 32) * 0.1 - 2.0                    # dark
    b = torch.randn(1, 3, 32, 32) * 2.0 + 1.0                    # bright, high contrast
    net = UNet(3, width=8, depth=2, embedding_dim=0, norm="group")
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            alone, together = net(a)["fg"], net(torch.cat([a, b]))["fg"][:1]
        assert torch.allclose(alone, together, atol=1e-5)
    bn = UNet(3, width=8, depth=2, embedding_dim=0, norm="batch").train()
    with torch.no_grad():
        assert not torch.allclose(bn(a)["fg"], bn(torch.cat([a, b]))["fg"][:1], atol=1e-3)
    with pytest.raises(ValueError, match="norm 'layer' unknown; choose one of batch, group"):
        UNet(norm="layer")
