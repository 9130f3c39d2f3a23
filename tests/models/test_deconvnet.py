import pytest
import torch

from attnseg.models import create_model
from attnseg.models.deconvnet import pad_to

from .base import ModelTest


class TestDeconvNetW025(ModelTest):
    model_name = "deconvnet_vgg16_w025"
    input_size = (37, 53)           # padded to 224x224 inside
    odd_sizes = ((45, 67), (229, 250))
    batch1_train_size = (229, 250)  # padded to 256x256: fc6 2x2, so train-mode BN sees 4 values per channel


def test_unpooling_puts_values_at_the_switches():
    model = create_model("deconvnet_vgg16_w025", num_classes=2)
    pool1, unpool = model.encoder.features[6], model.unpool
    assert isinstance(pool1, torch.nn.MaxPool2d) and pool1.return_indices
    x = torch.tensor([[1., 2., 0., 0.],
                      [3., 0., 0., 5.],
                      [0., 0., 7., 0.],
                      [0., 9., 0., 6.]]).view(1, 1, 4, 4)
    pooled, switches = pool1(x)
    assert pooled.view(-1).tolist() == [3., 5., 9., 7.]
    assert switches.view(-1).tolist() == [4, 7, 13, 10]  # flat positions (row * 4 + col) of the maxima
    decoded = torch.tensor([[10., 20.], [30., 40.]]).view(1, 1, 2, 2)
    out = unpool(decoded, switches, output_size=(4, 4))
    expected = torch.tensor([[0., 0., 0., 0.],
                             [10., 0., 0., 20.],
                             [0., 0., 40., 0.],
                             [0., 30., 0., 0.]]).view(1, 1, 4, 4)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("size,padded", [((37, 53), (224, 224)), ((224, 224), (224, 224)),
                                         ((229, 300), (256, 320)), ((1, 500), (224, 512))])
def test_input_is_padded_to_a_multiple_of_32_at_least_224(size, padded):
    x = torch.randn(1, 3, *size)
    y, (top, left) = pad_to(x, 224, 32)
    assert y.shape[-2:] == padded
    assert torch.equal(y[..., top:top + size[0], left:left + size[1]], x)


def test_reflect_padding_fails_early_on_tiny_inputs():
    with pytest.raises(ValueError, match="reflect"):
        pad_to(torch.randn(1, 3, 5, 5), 224, 32, mode="reflect")


def test_decoder_init_and_switch_attention():
    model = create_model("deconvnet_vgg16_w025", num_classes=2).eval()
    assert model.fc6_deconv[0].kernel_size == (7, 7)
    assert torch.all(model.fc6_deconv[1].bias == 0.001)  # Caffe BN shift filler
    assert model.score.weight.std() < 0.02               # Gaussian std 0.01
    with torch.no_grad():
        att = model(torch.randn(1, 3, 37, 53), return_attention=True)["attention"]["switches"]
    assert att.shape == (1, 1, 37, 53) and att.min() >= 0 and att.max() <= 1
