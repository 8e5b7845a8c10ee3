"""Each loss against a plain-formula reference written with Python loops and the math module."""

import math

import pytest
import torch

from recbole_gru4rec.steps import activations
from recbole_gru4rec.losses import (LOSS_TYPES, cross_entropy_with_gradient, pairwise_with_gradient, sampled_loss,
                                    softmax_weighted_with_gradient)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def reference(loss_type, scores, negatives, bpreg):
    """The papers' formulas, row by row; row i's target is column i; rows without negatives are skipped."""
    row_losses = []
    for i, row in enumerate(scores):
        r_i = row[i]
        neg = [row[j] for j in range(len(row)) if negatives[i][j]]
        if not neg:
            continue
        if loss_type == "TOP1":
            loss = sum(sigmoid(r_j - r_i) + sigmoid(r_j**2) for r_j in neg) / len(neg)
        elif loss_type == "BPR":
            loss = -sum(math.log(sigmoid(r_i - r_j)) for r_j in neg) / len(neg)
        else:
            z = sum(math.exp(r_j) for r_j in neg)
            s = [math.exp(r_j) / z for r_j in neg]
            if loss_type == "TOP1-max":
                loss = sum(s_j * (sigmoid(r_j - r_i) + sigmoid(r_j**2)) for s_j, r_j in zip(s, neg))
            elif loss_type == "BPR-max":
                loss = -math.log(sum(s_j * sigmoid(r_i - r_j) for s_j, r_j in zip(s, neg)))
                loss += bpreg * sum(s_j * r_j**2 for s_j, r_j in zip(s, neg))
            else:  # CE: softmax of the target among itself and its negatives
                loss = -math.log(math.exp(r_i) / (math.exp(r_i) + z))
        row_losses.append(loss)
    return sum(row_losses) / len(row_losses)


def random_case(seed, rows=5, extra=4):
    scores, items = random_case_with_items(seed, rows, extra)
    return scores, items[None, :] != items[:rows, None]


def random_case_with_items(seed, rows, extra):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, rows + extra, generator=generator, dtype=torch.float64) * 2
    items = torch.randint(1, 6, (rows + extra,), generator=generator)  # small id range: duplicates happen
    return scores, items


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_plain_formula(loss_type, seed):
    scores, negatives = random_case(seed)
    got = sampled_loss(loss_type, scores.diagonal(), scores, negatives, bpreg=0.7)
    expected = reference(loss_type, scores.tolist(), negatives.tolist(), 0.7)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_row_without_negatives_is_left_out_and_gets_no_gradient(loss_type):
    scores = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.3, 0.2]], dtype=torch.float64, requires_grad=True)
    negatives = torch.tensor([[False, False, False], [True, False, True]])
    loss = sampled_loss(loss_type, scores.diagonal(), scores, negatives, bpreg=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(reference(loss_type, scores.tolist(), negatives.tolist(), 1.0))
    assert torch.all(scores.grad[0] == 0)
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_batch_without_any_negative_gives_zero_loss(loss_type):
    scores = torch.tensor([[3.0]], requires_grad=True)
    loss = sampled_loss(loss_type, scores.diagonal(), scores, torch.tensor([[False]]))
    loss.backward()
    assert loss.item() == 0.0 and scores.grad.item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_large_scores_stay_finite(loss_type, magnitude):
    scores = torch.tensor([[magnitude, -magnitude, magnitude / 2], [magnitude, -magnitude, 0.0]], requires_grad=True)
    negatives = torch.tensor([[False, True, True], [True, False, True]])
    loss = sampled_loss(loss_type, scores.diagonal(), scores, negatives, bpreg=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


def test_unknown_loss_type_is_refused():
    scores, negatives = random_case(0)
    with pytest.raises(ValueError, match="loss_type='HINGE'"):
        sampled_loss("HINGE", scores.diagonal(), scores, negatives)


@pytest.mark.parametrize("seed", range(6))
def test_written_out_cross_entropy_gradient_matches_autograd(seed):
    scores, items = random_case_with_items(seed, rows=6, extra=3 * (seed % 3))  # seed 0, 3: no extra column
    scores.requires_grad_()
    negatives = items[None, :] != items[:6, None]
    expected = sampled_loss("CE", scores.diagonal(), scores, negatives)
    expected.backward()
    loss, gradient = cross_entropy_with_gradient(scores.detach(), items, items[:6])
    assert loss.item() == pytest.approx(reference("CE", scores.tolist(), negatives.tolist(), 0.0), rel=1e-9)
    torch.testing.assert_close(gradient, scores.grad, rtol=1e-9, atol=1e-12)


def test_written_out_cross_entropy_of_a_batch_without_negatives_is_zero():
    # With each row's target in its diagonal, a row has no negative only when every column holds its item.
    loss, gradient = cross_entropy_with_gradient(torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.3, 0.2]]),
                                                 torch.tensor([4, 4, 4]), torch.tensor([4, 4]))
    assert loss.item() == 0.0 and torch.all(gradient == 0)


@pytest.mark.parametrize("loss_type", ["TOP1", "BPR"])
@pytest.mark.parametrize("seed", range(4))
def test_written_out_pairwise_gradients_match_autograd(loss_type, seed):
    scores, items = random_case_with_items(seed, rows=6, extra=3 * (seed % 2))
    scores.requires_grad_()
    negatives = items[None, :] != items[:6, None]
    expected = sampled_loss(loss_type, scores.diagonal(), scores, negatives)
    expected.backward()
    loss, gradient = pairwise_with_gradient(loss_type, scores.detach(), items, items[:6])
    assert loss.item() == pytest.approx(reference(loss_type, scores.tolist(), negatives.tolist(), 0.0), rel=1e-9)
    torch.testing.assert_close(gradient, scores.grad, rtol=1e-9, atol=1e-12)
    all_same = pairwise_with_gradient(loss_type, scores.detach(), torch.full_like(items, 3), torch.full((6,), 3))
    assert all_same[0].item() == 0.0 and torch.all(all_same[1] == 0)


@pytest.mark.parametrize("loss_type", ["TOP1-max", "BPR-max"])
@pytest.mark.parametrize("seed", range(4))
def test_written_out_softmax_weighted_gradients_match_autograd(loss_type, seed):
    scores, items = random_case_with_items(seed, rows=6, extra=3 * (seed % 2))
    scores.requires_grad_()
    negatives = items[None, :] != items[:6, None]
    divisor = 8 if seed % 2 else None
    expected = sampled_loss(loss_type, scores.diagonal(), scores, negatives, bpreg=0.7, divisor=divisor)
    expected.backward()
    loss, gradient = softmax_weighted_with_gradient(loss_type, scores.detach(), items, items[:6], 0.7, divisor)
    rows_with_negatives = int(negatives.any(1).sum())
    by_formula = reference(loss_type, scores.tolist(), negatives.tolist(), 0.7) * rows_with_negatives / (divisor or rows_with_negatives)
    assert loss.item() == pytest.approx(by_formula, rel=1e-9)
    torch.testing.assert_close(gradient, scores.grad, rtol=1e-9, atol=1e-12)
    all_same = softmax_weighted_with_gradient(loss_type, scores.detach(), torch.full_like(items, 3), torch.full((6,), 3))
    assert all_same[0].item() == 0.0 and torch.all(all_same[1] == 0)


def test_written_out_bpr_max_stays_finite_where_every_negative_outscores_the_target_by_far():
    # sigma(r_t - r_j) underflows in float32 for differences beyond ~100: the loss is taken in the log domain.
    scores = torch.tensor([[-60.0, 60.0, 70.0], [50.0, -55.0, 65.0]])
    loss, gradient = softmax_weighted_with_gradient("BPR-max", scores, torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    expected = sampled_loss("BPR-max", scores.double().diagonal(), scores.double(),
                            torch.tensor([[False, True, True], [True, False, True]]), bpreg=0.0)
    assert torch.isfinite(gradient).all() and loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["tanh", "linear", "elu-1", "elu-0.5"])
def test_activation_slope_is_the_derivative(name):
    logits = torch.linspace(-3, 3, 13, dtype=torch.float64).add_(0.01).requires_grad_()  # 0 itself left out
    scores = activations.apply(name, logits)
    scores.sum().backward()
    torch.testing.assert_close(activations.slope(name, logits.detach(), scores.detach()), logits.grad)


@pytest.mark.parametrize("name,formula", [
    ("relu", lambda x: torch.clamp(x, min=0)),
    ("leaky-0.1", lambda x: torch.where(x > 0, x, 0.1 * x)),
    ("elu-0.5", lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
    ("selu-1.05-1.67", lambda x: 1.05 * torch.where(x > 0, x, 1.67 * (torch.exp(x) - 1))),
    ("tanh", torch.tanh),
    ("linear", lambda x: x),
])
def test_final_activations_are_the_authors_formulas_with_their_slopes(name, formula):
    from recbole_gru4rec.steps import activations

    logits = torch.linspace(-3, 3, 13, dtype=torch.float64).requires_grad_()  # 0 exactly is among them
    expected = formula(logits)
    torch.testing.assert_close(activations.apply(name, logits.detach()), expected.detach())
    (derivative,) = torch.autograd.grad(expected.sum(), logits)
    slope = activations.slope(name, logits.detach(), expected.detach())
    away_from_zero = logits.detach() != 0  # the kinks: either one-sided slope is a subgradient
    torch.testing.assert_close(slope[away_from_zero].double(), derivative[away_from_zero])
