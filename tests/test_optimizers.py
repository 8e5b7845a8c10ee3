"""AdagradMomentum against the author's Adagrad and momentum formulas, worked by hand."""

import pytest
import torch

from recbole_gru4rec.optimizers import AdagradMomentum


def authors_adagrad(params, gradients, lr, eps=1e-6):
    """The author's Adagrad (IndexedAdagradM), element by element: G += g^2; p -= lr g / sqrt(G + eps)."""
    sums = [[0.0] * len(p) for p in params]
    for step in gradients:
        for p, g, G in zip(params, step, sums):
            for i in range(len(p)):
                G[i] += g[i] * g[i]
                p[i] -= lr * g[i] / (G[i] + eps) ** 0.5
    return params


@pytest.mark.parametrize("sparse", [False, True])
def test_without_momentum_it_is_the_authors_adagrad(sparse):
    weight = torch.nn.Parameter(torch.tensor([[1.0], [2.0], [-1.0]]))
    optimizer = AdagradMomentum([weight], lr=0.1)
    gradients = [[0.5, 0.0, 1e-4], [0.25, -2.0, 1e-4], [0.0, 1.0, -3e-4]]
    for gradient in gradients:
        dense = torch.tensor(gradient)[:, None]
        weight.grad = dense.to_sparse() if sparse else dense
        optimizer.step()
    expected = authors_adagrad([[1.0, 2.0, -1.0]], [[g] for g in gradients], lr=0.1)[0]
    torch.testing.assert_close(weight[:, 0], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # eps inside the root: a first gradient of 1e-4 moves the weight by lr * 1e-4 / sqrt(1e-8 + 1e-6), about
    # lr / 10 -- not by lr, as eps outside the root (torch's Adagrad) would.
    assert abs(expected[2] + 1.0) < 0.05


@pytest.mark.parametrize("sparse", [False, True])
def test_momentum_follows_the_formula(sparse):
    weight = torch.nn.Parameter(torch.tensor([[1.0], [2.0]]))
    optimizer = AdagradMomentum([weight], lr=0.5, momentum=0.9)
    gradients = [torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [0.0]])]
    for gradient in gradients:
        weight.grad = gradient.to_sparse() if sparse else gradient
        optimizer.step()
    # row 0 by hand: G=4, v=0.5*2/sqrt(4+eps), w=1-v; then G=5, v=0.9*v+0.5*1/sqrt(5+eps), w-=v
    v1 = 0.5 * 2 / (4 + 1e-6) ** 0.5
    v = 0.9 * v1 + 0.5 / (5 + 1e-6) ** 0.5
    assert 1.0 - v1 == pytest.approx(0.5, rel=1e-6)
    assert weight[0, 0].item() == pytest.approx(0.5 - v, rel=1e-6)
    assert weight[1, 0].item() == pytest.approx(2.0)  # a row without gradient does not move


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_repeated_row_is_updated_once_with_its_summed_gradient(momentum):
    weight = torch.nn.Parameter(torch.tensor([[1.0], [2.0], [3.0]]))
    reference = torch.nn.Parameter(weight.detach().clone())
    optimizer = AdagradMomentum([weight], lr=0.5, momentum=momentum)
    reference_optimizer = AdagradMomentum([reference], lr=0.5, momentum=momentum)
    for _ in range(2):
        optimizer.update_rows(weight, torch.tensor([2, 0, 2]), torch.tensor([[1.0], [0.5], [3.0]]))
        reference_optimizer.update_rows(reference, torch.tensor([0, 2]), torch.tensor([[0.5], [4.0]]))
    torch.testing.assert_close(weight, reference, rtol=0, atol=0)
    assert weight[1, 0].item() == 2.0  # untouched
    # row 2 by hand without momentum: G=16, w=3-0.5*4/sqrt(16+eps); G=32, w-=0.5*4/sqrt(32+eps)
    if momentum == 0:
        assert weight[2, 0].item() == pytest.approx(3 - 2 / (16 + 1e-6) ** 0.5 - 2 / (32 + 1e-6) ** 0.5, rel=1e-6)


def test_bad_arguments_are_refused():
    weight = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="momentum 1.0"):
        AdagradMomentum([weight], momentum=1.0)
    with pytest.raises(ValueError, match="learning rate 0"):
        AdagradMomentum([weight], lr=0)
