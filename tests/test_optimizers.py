"""AdagradMomentum against torch's Adagrad and against the momentum formula worked by hand."""

import pytest
import torch

from recbole_gru4rec.optimizers import AdagradMomentum


def run_steps(optimizer_cls, sparse, steps=5, **kwargs):
    torch.manual_seed(0)
    table = torch.nn.Embedding(7, 3, sparse=sparse)
    dense = torch.nn.Linear(3, 2)
    optimizer = optimizer_cls(list(table.parameters()) + list(dense.parameters()), **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = torch.randint(0, 7, (4,), generator=generator)  # repeated rows: their gradients add up
        optimizer.zero_grad()
        dense(table(rows)).pow(2).sum().backward()
        optimizer.step()
    return table.weight.detach().clone(), dense.weight.detach().clone()


@pytest.mark.parametrize("sparse", [False, True])
def test_without_momentum_it_is_torch_adagrad(sparse):
    ours = run_steps(AdagradMomentum, sparse, lr=0.1)
    torchs = run_steps(torch.optim.Adagrad, sparse, lr=0.1)
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sparse", [False, True])
def test_momentum_follows_the_formula(sparse):
    weight = torch.nn.Parameter(torch.tensor([[1.0], [2.0]]))
    optimizer = AdagradMomentum([weight], lr=0.5, momentum=0.9)
    gradients = [torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [0.0]])]
    for gradient in gradients:
        weight.grad = gradient.to_sparse() if sparse else gradient
        optimizer.step()
    # row 0 by hand: G=4, v=0.5*2/2=0.5, w=0.5; then G=5, v=0.9*0.5+0.5*1/sqrt(5), w=0.5-v
    v = 0.9 * 0.5 + 0.5 / 5**0.5
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
    # row 2 by hand without momentum: G=16, w=3-0.5*4/4=2.5; G=32, w=2.5-0.5*4/sqrt(32)
    if momentum == 0:
        assert weight[2, 0].item() == pytest.approx(2.5 - 2 / 32**0.5, rel=1e-6)


def test_bad_arguments_are_refused():
    weight = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="momentum 1.0"):
        AdagradMomentum([weight], momentum=1.0)
    with pytest.raises(ValueError, match="learning rate 0"):
        AdagradMomentum([weight], lr=0)
