"""GRU4RecPaper's network against PyTorch's own GRU fed with real one-hot vectors, and its RecBole contract."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import model_with
from recbole_gru4rec.gru_cell import GRUCell
from recbole_gru4rec.steps import activations


def copy_into_torch_gru(model):
    """An nn.GRU over one-hot inputs holding exactly the model's weights."""
    gru = torch.nn.GRU(model.n_items, model.hidden_size, num_layers=model.num_layers, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(model.input_layer.weight.T)
        gru.bias_ih_l0.copy_(model.input_bias)
        for layer in range(model.num_layers):
            getattr(gru, f"weight_hh_l{layer}").copy_(model.hidden_layers[layer].weight)
            getattr(gru, f"bias_hh_l{layer}").copy_(model.hidden_layers[layer].bias)
            if layer > 0:
                getattr(gru, f"weight_ih_l{layer}").copy_(model.upper_input_layers[layer - 1].weight)
                getattr(gru, f"bias_ih_l{layer}").copy_(model.upper_input_layers[layer - 1].bias)
    return gru


@pytest.mark.parametrize("num_layers", [1, 2])
def test_row_gather_equals_one_hot_times_weights(ml100k, num_layers):
    """With gru_cell: pytorch the network is torch.nn.GRU fed real one-hot vectors."""
    model = model_with(ml100k, num_layers=num_layers, gru_cell="pytorch").eval()
    gru = copy_into_torch_gru(model)
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (16,), generator=generator)
    sequences = torch.randint(1, model.n_items, (16, 8), generator=generator)
    sequences[torch.arange(8)[None, :] >= lengths[:, None]] = 0
    with torch.no_grad():
        ours = model.forward(sequences, lengths)
        outputs, _ = gru(F.one_hot(sequences, model.n_items).float())
        reference = outputs[torch.arange(16), lengths - 1]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_weights_are_uniform_within_the_shape_bound(ml100k):
    model = model_with(ml100k)
    bound = math.sqrt(6 / (model.n_items + model.hidden_size))
    weights = model.input_layer.weight
    assert weights.abs().max() <= bound
    assert weights.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # std of U(-x, x) is x/sqrt(3)
    recurrent = model.hidden_layers[0].weight
    assert recurrent.abs().max() <= math.sqrt(6 / (2 * model.hidden_size))
    assert torch.all(model.output_bias == 0)


@pytest.mark.parametrize(
    "options",
    [
        {"embedding_size": 32},
        {"constrained_embedding": True},
        {"ff_hidden_size": 40, "num_layers": 2},
        {"constrained_embedding": True, "ff_hidden_size": 40},
        {"dropout_prob_input": 0.3, "loss_type": "BPR-max", "n_sample": 16, "final_activation": "elu-0.5"},
        {"loss_type": "CE", "n_sample": 16, "logq": 1.0, "final_activation": "linear"},
    ],
)
def test_every_input_mode_trains_and_scores(ml100k, options):
    config, _, train, _, _ = ml100k
    model = model_with(ml100k, **options).train()
    if options.get("constrained_embedding"):
        assert model.item_embedding is model.output_weights
    batch = next(iter(train))
    loss = model.calculate_loss(batch)  # RecBole's own prefix-augmented batch
    loss.backward()
    assert torch.isfinite(loss)
    assert model.output_weights.weight.grad is not None
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), model.n_items)


def test_predict_agrees_with_full_sort_predict(ml100k):
    _, _, train, _, _ = ml100k
    model = model_with(ml100k).eval()
    batch = next(iter(train))
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        single = model.predict(batch)
    torch.testing.assert_close(single, full[torch.arange(len(batch)), batch["item_id"]])


def test_one_hot_input_dropout_drops_whole_rows(ml100k):
    model = model_with(ml100k, dropout_prob_input=0.5).train()
    items = torch.arange(1, 201)
    gates = model._input_gates(items) - model.input_bias
    rows = model.input_layer(items)
    kept = (gates != 0).all(1)
    torch.testing.assert_close(gates[kept], rows[kept] * 2.0)
    assert torch.all(gates[~kept] == 0)
    assert 60 < int(kept.sum()) < 140


@pytest.mark.parametrize("name,value,expected", [("tanh", 2.0, math.tanh(2.0)), ("linear", -3.0, -3.0),
                                                 ("elu-0.5", -1.0, 0.5 * (math.exp(-1.0) - 1)), ("elu-2", 1.5, 1.5)])
def test_final_activations(name, value, expected):
    assert activations.apply(name, torch.tensor(value)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("reset_before", [True, False], ids=["paper", "pytorch"])
@pytest.mark.parametrize("hidden_needs_grad", [False, True])
def test_gru_cell_backward_matches_numerical_derivatives(hidden_needs_grad, reset_before):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 3 * 5, generator=generator, dtype=torch.float64, requires_grad=True),
              torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=hidden_needs_grad),
              torch.randn(3 * 5, 5, generator=generator, dtype=torch.float64, requires_grad=True),
              torch.randn(3 * 5, generator=generator, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *tensors: GRUCell.apply(*tensors, reset_before), inputs)
