"""The discriminative loss against a loop-by-loop implementation of Eq. 1, its hinges, and gradcheck in float64."""

import itertools

import pytest
import torch

from attnseg.nn.discriminative_loss import discriminative_loss


def brute(emb, ids, dv=0.5, dd=1.5, gamma=0.001):
    total = 0.0
    for b in range(emb.shape[0]):
        labels = sorted({int(v) for v in ids[b].flatten().tolist()} - {0})
        if not labels:
            continue
        mus, var = {}, 0.0
        for c in labels:
            pix = [emb[b, :, y, x] for y in range(ids.shape[1]) for x in range(ids.shape[2]) if ids[b, y, x] == c]
            mus[c] = sum(pix) / len(pix)
            var += sum(max(float((mus[c] - p).norm()) - dv, 0.0) ** 2 for p in pix) / len(pix)
        var /= len(labels)
        pairs = list(itertools.permutations(labels, 2))
        dist = sum(max(2 * dd - float((mus[a] - mus[c]).norm()), 0.0) ** 2 for a, c in pairs) / len(pairs) \
            if pairs else 0.0
        reg = sum(float(mus[c].norm()) for c in labels) / len(labels)
        total += var + dist + gamma * reg
    return total / emb.shape[0]


def test_matches_the_loop_implementation():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 4, 6, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 4, (3, 6, 7), generator=g)
    ids[2] = 0                                                        # an image without instances
    ids[1] = torch.where(ids[1] > 0, 5, 0)                            # one instance: no push term
    loss, parts = discriminative_loss(emb, ids)
    assert loss.item() == pytest.approx(brute(emb, ids), rel=1e-10)
    assert set(parts) == {"var", "dist", "reg"}


def test_hinges_give_zero_for_tight_far_clusters():
    emb = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2], ids[0, 2:] = 1, 2
    emb[0, 0, :2], emb[0, 0, 2:] = -2.0, 2.0                          # means 4 apart > 2·δd, spread 0 < δv
    loss, parts = discriminative_loss(emb, ids, gamma=0.0)
    assert loss.item() == 0.0 and parts["var"].item() == 0 and parts["dist"].item() == 0
    emb[0, 0, 2:] = -1.0                                              # means 1 apart: pushed, (3 - 1)^2
    assert discriminative_loss(emb, ids, gamma=0.0)[1]["dist"].item() == pytest.approx(4.0)


def test_gradcheck_and_ignore():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 3, (2, 4, 5), generator=g)
    assert torch.autograd.gradcheck(lambda e: discriminative_loss(e, ids)[0], (emb,))
    ignore = torch.zeros(2, 4, 5, dtype=torch.bool)
    ignore[:, 0] = True
    a = discriminative_loss(emb, ids, ignore=ignore)[0]
    b = discriminative_loss(emb, torch.where(ignore, 0, ids))[0]
    assert a.item() == pytest.approx(b.item())
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        discriminative_loss(emb, ids[:, :3])
