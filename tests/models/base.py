"""One behavioural test class for every semantic model (segmentation_models_pytorch's tests/models/base.py).

A model's test file subclasses ``ModelTest`` in a few lines::

    class TestFCN8sResNet18(ModelTest):
        model_name = "fcn8s_resnet18"

Class attributes:
    model_name: registry name.
    kwargs: extra ``create_model`` options (e.g. a small ``width``).
    num_classes: K.
    input_size: (H, W) of the main checks; small.
    odd_sizes: sizes checked for "any H, W".
    batch1_train_size: a size at which train-mode BN sees more than one value per channel with batch 1
        (``None``: ``input_size``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnseg.models import create_model


class ModelTest:
    model_name: str
    kwargs: dict = {}
    num_classes: int = 3
    input_size: tuple[int, int] = (64, 64)
    odd_sizes: tuple[tuple[int, int], ...] = ((37, 53), (45, 67))
    batch1_train_size: tuple[int, int] | None = None
    batch_size: int = 2

    # helpers -------------------------------------------------------------------------------------------------
    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        return create_model(self.model_name, num_classes=self.num_classes, **self.kwargs)

    def images(self, size=None, batch=None, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch or self.batch_size, 3, *(size or self.input_size), generator=g)

    def check_logits(self, out: dict, batch: int, size) -> None:
        assert out["logits"].shape == (batch, self.num_classes, *size)
        assert torch.isfinite(out["logits"]).all()

    # behaviour -----------------------------------------------------------------------------------------------
    def test_forward_train(self):
        model = self.make().train()
        out = model(self.images())
        self.check_logits(out, self.batch_size, self.input_size)
        assert isinstance(out["aux"], dict)
        for name, aux in out["aux"].items():
            assert aux.shape == out["logits"].shape, name
        assert "attention" not in out

    def test_backward(self):
        model = self.make().train()
        out = model(self.images())
        target = torch.randint(0, self.num_classes, (self.batch_size, *self.input_size))
        loss = F.cross_entropy(out["logits"], target)
        for aux in out["aux"].values():
            loss = loss + 0.4 * F.cross_entropy(aux, target)
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        got = [(n, p) for n, p in trainable if p.grad is not None]
        assert got, "no parameter received a gradient"
        missing = [n for n, p in trainable if p.grad is None]
        assert not missing, f"trainable parameters without gradient: {missing[:8]}"
        bad = [n for n, p in got if not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradients: {bad[:8]}"

    def test_odd_sizes(self):
        model = self.make()
        for size in self.odd_sizes:
            model.train()
            self.check_logits(model(self.images(size)), self.batch_size, size)
            model.eval()
            with torch.no_grad():
                self.check_logits(model(self.images(size, seed=1)), self.batch_size, size)

    def test_batch_one(self):
        model = self.make()
        size = self.batch1_train_size or self.input_size
        model.train()
        self.check_logits(model(self.images(size, batch=1)), 1, size)
        model.eval()
        with torch.no_grad():
            self.check_logits(model(self.images(batch=1)), 1, self.input_size)

    def test_eval_empty_aux_and_determinism(self):
        model = self.make().eval()
        x = self.images()
        with torch.no_grad():
            a, b = model(x), model(x)
        assert a["aux"] == {}
        assert torch.equal(a["logits"], b["logits"])

    def test_state_dict_roundtrip(self, tmp_path):
        from safetensors.torch import load_file, save_file

        model = self.make()
        model.train()
        with torch.no_grad():
            model(self.images(seed=2))  # move BN running statistics away from their initial values
        model.eval()
        x = self.images()
        with torch.no_grad():
            ref = model(x)["logits"]
        torch.save(model.state_dict(), tmp_path / "model.pth")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
        for sd in (torch.load(tmp_path / "model.pth", weights_only=True),
                   load_file(str(tmp_path / "model.safetensors"))):
            fresh = self.make(seed=123)
            fresh.load_state_dict(sd, strict=True)
            fresh.eval()
            with torch.no_grad():
                assert torch.equal(fresh(x)["logits"], ref)

    def test_predict(self):
        model = self.make().eval()
        pred = model.predict(self.images())
        assert pred.shape == (self.batch_size, *self.input_size)
        assert pred.dtype == torch.int64
        assert pred.min() >= 0 and pred.max() < self.num_classes

    def test_return_attention(self):
        model = self.make().eval()
        with torch.no_grad():
            out = model(self.images(), return_attention=True)
        self.check_logits(out, self.batch_size, self.input_size)
        assert isinstance(out["attention"], dict)
        for name, att in out["attention"].items():
            assert isinstance(att, torch.Tensor) and att.shape[0] == self.batch_size, name
            assert torch.isfinite(att).all(), name

    def test_batch_independence(self):
        model = self.make().eval()
        x = self.images()
        y = x.clone()
        y[1:] = self.images(seed=7)[1:]
        with torch.no_grad():
            a, b = model(x)["logits"], model(y)["logits"]
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a[1], b[1])
