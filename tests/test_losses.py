"""The generative loss (eqs. 8-10) and the ESS diagnostic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gencnn_plugin import GenerativeLoss, generative_loss, importance_ess


def eq10_by_hand(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and d loss / d f written out from eq. (8) and eq. (10) with explicit loops, mean over i."""
    n, k = f.shape
    loss = torch.zeros((), dtype=f.dtype)
    grad = torch.zeros_like(f)
    for i in range(n):
        yi = int(y[i])
        z = sum(math.exp(f[j, yi]) for j in range(n))
        loss += -f[i, yi] + math.log(z) - math.log(n)
        for j in range(n):
            w = math.exp(f[j, yi]) / z
            # eq. (10) gives d log p / d f; the loss is its negative, averaged over i
            grad[j, yi] += -((1.0 if j == i else 0.0) - w) / n
    return loss / n, grad


@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2, 4], [3, 3, 3, 3], [1, 0, 2, 3, 4, 0, 1, 2]])
def test_loss_and_gradient_match_eq10(labels):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor(labels)
    f = (torch.randn(len(labels), 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    loss = generative_loss(f, y)
    loss.backward()
    ref_loss, ref_grad = eq10_by_hand(f.detach(), y)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.grad, ref_grad, rtol=1e-12, atol=1e-12)
    # columns of classes absent from the batch get no gradient (eq. 10, y != y_i)
    absent = [c for c in range(5) if c not in labels]
    assert torch.all(f.grad[:, absent] == 0)


def test_reductions_and_module():
    f, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    per = generative_loss(f, y, reduction="none")
    assert per.shape == (6,)
    torch.testing.assert_close(generative_loss(f, y, "sum"), per.sum())
    torch.testing.assert_close(GenerativeLoss()(f, y), per.mean())
    with pytest.raises(ValueError, match="reduction"):
        generative_loss(f, y, "max")


def test_batch_of_one_is_defined():
    f = torch.randn(1, 4, requires_grad=True)
    loss = generative_loss(f, torch.tensor([2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(f.grad == 0)


def test_stable_for_huge_logits():
    f = torch.tensor([[1e4, 0.0], [-1e4, 0.0], [0.0, 3e4]], requires_grad=True)
    loss = generative_loss(f, torch.tensor([0, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_autocast_bf16_matches_float32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    ref = generative_loss(layer(x), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = generative_loss(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert abs(loss.item() - ref.item()) < 0.05 and torch.isfinite(layer.weight.grad).all()


def test_class_intercepts_get_no_generative_gradient():
    """f_y -> f_y + b_y leaves eq. (8) unchanged: GG cannot learn intercepts, DG fine-tuning adjusts them."""
    layer = torch.nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    generative_loss(layer(x), y).backward()
    assert layer.bias.grad.abs().max() < 1e-6 and layer.weight.grad.abs().max() > 1e-3


def test_labels_out_of_range_are_a_clear_error():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        generative_loss(torch.randn(4, 3), torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="shape"):
        generative_loss(torch.randn(4, 3), torch.tensor([0, 1]))


def test_importance_ess_bounds():
    y = torch.tensor([0, 1, 0, 1, 2])
    assert importance_ess(torch.zeros(5, 3), y).item() == pytest.approx(1.0)
    peaked = torch.zeros(5, 3)
    peaked[0] = 100.0  # image 0 dominates every class's weights
    assert importance_ess(peaked, y).item() == pytest.approx(1 / 5, rel=1e-4)
    ess = importance_ess(torch.randn(5, 3) * 2, y, reduction="none")
    assert ess.shape == (5,) and torch.all((ess >= 1 / 5 - 1e-6) & (ess <= 1 + 1e-6))


def test_generative_gradient_alone_separates_two_classes():
    """A 2-class toy problem: a linear scorer trained only with GG classifies held-out points."""
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([2.0, -1.0])

    def sample(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 2, generator=g) + torch.where(y[:, None] == 0, mu, -mu)
        return x, y

    scorer = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(scorer.parameters(), lr=0.1)
    for _ in range(200):
        x, y = sample(64)
        opt.zero_grad()
        generative_loss(scorer(x), y).backward()
        opt.step()
    x, y = sample(2000)
    acc = (scorer(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95, acc
    assert F.cross_entropy(scorer(x), y).item() < 0.3
