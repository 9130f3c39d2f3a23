import pytest
import torch

from attnseg.nn.embedding_loss import EmbeddingLoss, embedding_loss


def two_region_example(value_right: float):
    """5x5: columns 0-1 label 0 with e = 0, columns 2-4 label 1 with e = value_right (1-d embedding)."""
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[:, :, 2:] = 1
    e = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    e[:, :, :, 2:] = value_right
    return e, labels


def brute_force(e, labels, alpha, beta, dilations, ignore, squared):
    B, _, H, W = e.shape
    total = 0.0
    for dil in dilations:
        s, n = 0.0, 0
        for b in range(B):
            for i in range(H):
                for j in range(W):
                    for dy in (-dil, 0, dil):
                        for dx in (-dil, 0, dil):
                            y, x = i + dy, j + dx
                            if (dy, dx) == (0, 0) or not (0 <= y < H and 0 <= x < W):
                                continue
                            if labels[b, i, j] == ignore or labels[b, y, x] == ignore:
                                continue
                            d = (e[b, :, i, j] - e[b, :, y, x]).abs().sum().item()
                            h = max(d - alpha, 0) if labels[b, i, j] == labels[b, y, x] else max(beta - d, 0)
                            s += 0.5 * h * h if squared else h
                            n += 1
        total += s / max(n, 1)
    return total


def test_hand_made_5x5():
    # far apart (d = 3 > beta) and same-label pairs at distance 0: no loss at any dilation
    e, labels = two_region_example(3.0)
    assert embedding_loss(e, labels).item() == 0.0
    # d = 1 across the boundary: hinge beta - d = 1 on each of the 26 ordered cross-boundary pairs (5 horizontal and
    # 8 diagonal neighbours, both ways) among the 144 ordered 8-neighbour pairs of a 5x5 grid
    e, labels = two_region_example(1.0)
    assert embedding_loss(e, labels, dilations=(1,)).item() == pytest.approx(26 / 144)
    # squared: 0.5 * 1^2 per pair
    assert embedding_loss(e, labels, dilations=(1,), squared=True).item() == pytest.approx(13 / 144)


@pytest.mark.parametrize("squared", [False, True])
def test_matches_brute_force_with_ignore_and_dilations(squared):
    torch.manual_seed(0)
    e = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 7))
    labels[0, 1, 2] = labels[1, 4, 4] = 255
    got = EmbeddingLoss(squared=squared)(e, labels).item()
    assert got == pytest.approx(brute_force(e, labels, 0.5, 2.0, (1, 2, 5), 255, squared))


def test_gradcheck_and_errors():
    torch.manual_seed(1)
    e = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (1, 4, 5))
    assert torch.autograd.gradcheck(lambda t: embedding_loss(t, labels, dilations=(1, 2)), (e,))
    with pytest.raises(ValueError, match="alpha"):
        embedding_loss(e, labels, alpha=2.0, beta=0.5)
    with pytest.raises(ValueError, match="do not fit"):
        embedding_loss(e, labels[:, :3])
