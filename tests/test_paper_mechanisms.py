"""The mechanisms the papers name, each against a reference written here from the papers' formulas:
popularity sampling, the logQ correction, the learned and shared embeddings with the feedforward head, and the
evaluation's metrics recomputed from the model's scores."""

import copy
import pytest
import torch
from recbole.data.interaction import Interaction
from scipy import stats

from conftest import metrics_from_scores, model_with
from recbole_gru4rec import GRU4RecPaper, SessionParallelTrainer
from recbole_gru4rec.sampling import PopularitySampler


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_extra_negatives_follow_support_to_the_alpha_and_never_zero_support(alpha):
    support = torch.tensor([0, 5, 0, 1, 20, 3, 0, 8, 2, 0])  # id 0 is padding; 2, 6 and 9 never occur in training
    sampler = PopularitySampler(support, n_sample=100, alpha=alpha, generator=torch.Generator().manual_seed(1), device="cpu")
    counts = torch.bincount(torch.cat([sampler.next() for _ in range(2000)]), minlength=len(support))
    assert counts[support == 0].sum() == 0
    drawable = support > 0
    expected = support[drawable].double() ** alpha
    expected = expected / expected.sum() * counts.sum()
    chi2 = float(((counts[drawable] - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(0.999, df=int(drawable.sum()) - 1), (counts.tolist(), expected.tolist())


def test_logq_subtracts_log_popularity_and_alpha_times_it_for_the_extra_negatives(ml100k):
    """CIKM 2018's logQ as the author's code applies it: each column's score minus logq * log Q, where Q is the
    popularity for the mini-batch's targets and popularity^sample_alpha for the extra negatives."""
    model, train = model_with(ml100k, loss_type="CE", logq=0.7, n_sample=16, sample_alpha=0.25), ml100k[2]
    # Training events counted from RecBole's prefix rows: every target, plus each user's first event.
    rows = train._dataset.inter_feat
    first_events = rows["item_id_list"][rows["item_length"] == 1, 0]
    counts = (torch.bincount(rows["item_id"], minlength=model.n_items)
              + torch.bincount(first_events, minlength=model.n_items)).double()
    columns = torch.tensor([50, 1, 300, 7, 1])  # two rows' targets, then three extra negatives (one repeats a target)
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    log_q = torch.log(counts[columns]) * torch.tensor([1.0, 1.0, 0.25, 0.25, 0.25], dtype=torch.float64)
    expected = logits - 0.7 * log_q.float()
    torch.testing.assert_close(model.scores(logits, columns), expected)  # CE's default activation is linear
    # The sign: of two targets with equal logits, the more popular one loses more of its score.
    scores = model.scores(torch.zeros(2, 2), torch.tensor([300, 1]))
    assert counts[300] > counts[1] and scores[0, 0] < scores[0, 1]
    # The sampled cross-entropy of those scores, by hand: -log softmax of each row's target over its row, where
    # a column holding the row's own target again is no negative.
    targets = columns[:2]
    masked = expected.clone()
    masked[1, 4] = float("-inf")  # row 1's target (item 1) sampled again
    # Summed over the rows, divided by the batch size (the author's loss scale; here 2 rows of a batch of 50).
    manual = (torch.logsumexp(masked, dim=1) - expected.diagonal()).sum() / ml100k[0]["train_batch_size"]
    torch.testing.assert_close(model.loss_of_logits(logits, columns, targets), manual)


def reference_scores(model, sequence, embedding):
    """All items' scores after ``sequence`` by the papers' equations, with torch.nn.GRUCell as the recurrence."""
    cell = torch.nn.GRUCell(model.input_layer.in_features, model.hidden_size)
    with torch.no_grad():
        cell.weight_ih.copy_(model.input_layer.weight)
        cell.bias_ih.copy_(model.input_layer.bias)
        cell.weight_hh.copy_(model.hidden_layers[0].weight)
        cell.bias_hh.copy_(model.hidden_layers[0].bias)
        hidden = torch.zeros(1, model.hidden_size)
        for item in sequence:
            hidden = cell(embedding[item][None, :], hidden)  # x_t = E[item]: the learned or shared embedding
        output = hidden
        if model.feedforward is not None:  # the optional feedforward layer before the output (ICLR 2016, sec. 3.1)
            output = torch.tanh(output @ model.feedforward.weight.T + model.feedforward.bias)
        return (output @ model.output_weights.weight.T + model.output_bias)[0]


@pytest.mark.parametrize("options", [{"embedding_size": 24}, {"constrained_embedding": True},
                                     {"constrained_embedding": True, "ff_hidden_size": 40},
                                     {"embedding_size": 16, "ff_hidden_size": 32}])
def test_embeddings_and_feedforward_compute_the_papers_network(ml100k, options):
    # The recurrence is torch.nn.GRUCell here (the GRU's own form: test_the_gru_is_the_papers_*).
    model = model_with(ml100k, dropout_prob_hidden=0.0, gru_cell="pytorch", **options)
    with torch.no_grad():
        model.output_bias.uniform_(-0.1, 0.1)  # zero at start; give it a part in the comparison
        model.input_layer.bias.uniform_(-0.1, 0.1)
    model.eval()
    # The shared ("constrained") embedding is the output matrix itself (CIKM 2018, sec. 3.3); else its own table.
    if options.get("constrained_embedding"):
        embedding = model.output_weights.weight
        assert embedding.shape == (model.n_items, options.get("ff_hidden_size") or model.hidden_size)
    else:
        embedding = model.item_embedding.weight
        assert embedding.data_ptr() != model.output_weights.weight.data_ptr()
    sequence = [12, 7, 300, 7, 41]
    interaction = Interaction({model.ITEM_SEQ: torch.tensor([sequence]), model.ITEM_SEQ_LEN: torch.tensor([len(sequence)])})
    with torch.no_grad():
        ours = model.full_sort_predict(interaction)[0]
    torch.testing.assert_close(ours, reference_scores(model, sequence, embedding), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{"embedding_size": 24}, {"constrained_embedding": True, "ff_hidden_size": 40}])
def test_evaluation_over_more_events_than_items_reads_the_same_network(ml100k, options):
    # 500 sequences of 1-6 events: more events than ml-100k's 1,683 items, so the input gates of the whole catalog
    # are taken in one product and read per event (GRU4RecPaper._input_gate_table).
    model = model_with(ml100k, dropout_prob_hidden=0.0, gru_cell="pytorch", **options)
    with torch.no_grad():
        model.output_bias.uniform_(-0.1, 0.1)
        model.input_layer.bias.uniform_(-0.1, 0.1)
    model.eval()
    generator = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 7, (500,), generator=generator)
    sequences = torch.randint(1, model.n_items, (500, 6), generator=generator)
    sequences[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    assert int(lengths.sum()) > model.n_items and model._input_gate_table(int(lengths.sum())) is not None
    interaction = Interaction({model.ITEM_SEQ: sequences, model.ITEM_SEQ_LEN: lengths})
    with torch.no_grad():
        ours = model.full_sort_predict(interaction)
    embedding = model.item_embedding.weight
    for row in [0, 1, 250, 499]:
        sequence = sequences[row, : lengths[row]].tolist()
        torch.testing.assert_close(ours[row], reference_scores(model, sequence, embedding), rtol=1e-5, atol=1e-5)


def test_evaluation_metrics_equal_a_calculation_from_the_scores(ml100k):
    config, _, train, valid, test = ml100k
    config = copy.deepcopy(config)
    config["epochs"] = 1
    torch.manual_seed(0)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    trainer.fit(train, valid, saved=False, verbose=False)
    result = trainer.evaluate(test, load_best_model=False)
    trainer.model.eval()
    expected = metrics_from_scores(trainer.model, test)
    assert expected["ndcg@10"] > 0.01  # a trained model, not a degenerate one
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=6e-5), name  # RecBole rounds to 4 decimals


@pytest.mark.parametrize("num_layers", [1, 2])
def test_the_dropped_output_is_the_carried_state(ml100k, num_layers):
    """As in the author's code: each layer's output after dropout is both what the next layer (or the scores)
    reads and the hidden state carried to the next step; without training mode nothing is dropped."""
    model = model_with(ml100k, dropout_prob_hidden=0.5, num_layers=num_layers).train()
    items = torch.arange(1, 65)
    start = torch.randn(num_layers, 64, model.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.1
    torch.manual_seed(5)
    output, carried = model.session_step(items, start)
    torch.testing.assert_close(output, carried[-1], rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        undropped, undropped_carried = model.session_step(items, start)
    if num_layers == 1:  # the same GRU update, then dropout: each unit kept (scaled by 1/(1-p)) or zeroed
        kept = carried[0] != 0
        torch.testing.assert_close(carried[0][kept], 2 * undropped_carried[0][kept])
        assert 0.4 < kept.double().mean() < 0.6


@pytest.mark.parametrize("loss_type,activation", [
    ("CE", lambda x: x), ("TOP1", torch.tanh), ("BPR", torch.tanh), ("TOP1-max", torch.tanh),
    ("BPR-max", lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
])
def test_the_default_final_activation_is_the_papers_for_each_loss(ml100k, loss_type, activation):
    """final_activation: auto (the default): linear for CE, tanh for TOP1 / BPR (ICLR 2016), ELU 0.5 for BPR-max."""
    model = model_with(ml100k, loss_type=loss_type)
    logits = torch.linspace(-3, 3, 13)[None, :]
    torch.testing.assert_close(model.scores(logits, torch.arange(1, 14)), activation(logits))


def papers_gru_scores(model, sequence):
    """All items' scores after ``sequence`` by the ICLR 2016 paper's GRU (eq. 2-5), written with plain tensor
    operations on the model's weights. The paper's update gate weighs the candidate; the model's weighs the old
    state (PyTorch's layout): the same family of functions, z_paper = 1 - z."""
    size = model.hidden_size
    w_input, b_input = model.input_layer.weight, model.input_bias  # one-hot input: W x is a row of the table
    u, b_hidden = model.hidden_layers[0].weight, model.hidden_layers[0].bias
    h = torch.zeros(size)
    for item in sequence:
        wx = w_input[item] + b_input
        r = torch.sigmoid(wx[:size] + u[:size] @ h + b_hidden[:size])
        z = 1 - torch.sigmoid(wx[size : 2 * size] + u[size : 2 * size] @ h + b_hidden[size : 2 * size])
        candidate = torch.tanh(wx[2 * size :] + u[2 * size :] @ (r * h) + b_hidden[2 * size :])  # r on h, then U
        h = (1 - z) * h + z * candidate
    return model.output_weights.weight @ h + model.output_bias


def test_the_gru_is_the_papers_reset_before_the_recurrent_matrix(ml100k):
    model = model_with(ml100k, dropout_prob_hidden=0.0)  # gru_cell: paper, the default
    with torch.no_grad():
        model.hidden_layers[0].bias.uniform_(-0.5, 0.5)  # zero at start: give the biases a part
        model.input_bias.uniform_(-0.5, 0.5)
    sequence = [3, 90, 3, 512, 44, 7]
    interaction = Interaction({model.ITEM_SEQ: torch.tensor([sequence]), model.ITEM_SEQ_LEN: torch.tensor([6])})
    # Forward: the model's scores equal the paper's equations.
    ours = model.full_sort_predict(interaction)[0]
    reference = papers_gru_scores(model, sequence)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # Backward through time: the gradients of a loss on those scores agree for every weight.
    weights = [model.input_layer.weight, model.input_bias, model.hidden_layers[0].weight, model.hidden_layers[0].bias]
    ours_grads = torch.autograd.grad(ours[[5, 17, 300]].sum(), weights)
    reference_grads = torch.autograd.grad(reference[[5, 17, 300]].sum(), weights)
    for ours_grad, reference_grad in zip(ours_grads, reference_grads):
        torch.testing.assert_close(ours_grad.to_dense(), reference_grad.to_dense(), rtol=1e-4, atol=1e-6)


def assert_both_paths_give(model, logits, columns, targets, expected):
    """The autograd loss and the fused step's written-out loss are ``expected``, with the same gradient."""
    from recbole_gru4rec.steps.fused import loss_and_gradient

    torch.testing.assert_close(model.loss_of_logits(logits, columns, targets), expected)
    loss, gradient = loss_and_gradient(model, logits, columns, targets)
    leaf = logits.clone().requires_grad_()
    model.loss_of_logits(leaf, columns, targets).backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(gradient, leaf.grad)


@pytest.mark.parametrize("remove", [True, False])
def test_accidental_hits_are_negatives_only_in_the_authors_way(ml100k, remove):
    # Row 0's target (item 5) is also column 2 (a sampled copy); row 1's target (item 7) has no copy.
    model = model_with(ml100k, loss_type="CE", final_activation="linear", remove_accidental_hits=remove, loss_scale="rows")
    logits = torch.tensor([[2.0, 0.5, 2.0, -1.0], [0.3, 1.5, 0.0, 0.7]])
    columns, targets = torch.tensor([5, 7, 5, 9]), torch.tensor([5, 7])
    kept = [[0, 1, 3], [0, 1, 2, 3]] if remove else [[0, 1, 2, 3], [0, 1, 2, 3]]  # row 0 drops the copy, or not
    expected = sum(torch.logsumexp(logits[row, kept[row]], 0) - logits[row, row] for row in range(2)) / 2
    assert_both_paths_give(model, logits, columns, targets, expected)


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
@pytest.mark.parametrize("scale", ["batch_size", "rows"])
def test_a_narrow_steps_loss_is_its_rows_sum_over_the_batch_size_as_the_authors(ml100k, loss_type, scale):
    # 3 sessions left in a batch of 5 (an epoch's end): the author's code divides their summed loss by 5.
    model = model_with(ml100k, loss_type=loss_type, final_activation="linear", loss_scale=scale, train_batch_size=5)
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.3, 1.5, 0.0, 0.7], [1.0, -1.0, 0.2, 0.1]])
    columns, targets = torch.tensor([5, 7, 9, 11]), torch.tensor([5, 7, 9])
    if loss_type == "CE":  # -log softmax of the target
        per_row = [torch.logsumexp(logits[row], 0) - logits[row, row] for row in range(3)]
    else:  # the mean over the row's negatives of -log sigmoid(r_i - r_j)
        per_row = [-torch.nn.functional.logsigmoid(logits[row, row] - logits[row, [j for j in range(4) if j != row]]).mean()
                   for row in range(3)]
    expected = sum(per_row) / (5 if scale == "batch_size" else 3)
    assert_both_paths_give(model, logits, columns, targets, expected)


def test_the_output_bias_moves_only_where_a_step_scores_as_the_authors_sparse_bias(ml100k):
    # With momentum, a dense update would keep moving every item's bias by its velocity at every step; the
    # author's indexed Adagrad (and GRU4RecPaper) moves an item's bias only at the steps that score it.
    from recbole_gru4rec.optimizers import AdagradMomentum

    model = model_with(ml100k, loss_type="BPR", final_activation="linear", learner="adagrad_momentum", momentum=0.5)
    optimizer = AdagradMomentum(model.parameters(), lr=0.1, momentum=0.5, eps=1e-6)
    hidden = torch.zeros(1, 2, model.hidden_size)
    biases = []
    for items, targets in ((torch.tensor([1, 2]), torch.tensor([3, 4])), (torch.tensor([5, 6]), torch.tensor([7, 8]))):
        optimizer.zero_grad()
        output, hidden = model.session_step(items, hidden.detach())
        loss = model.loss_of_logits(model.logits(output, targets), targets, targets)
        loss.backward()
        if not biases:
            gradient = model.output_bias.grad.to_dense()[3].item()
        optimizer.step()
        biases.append(model.output_bias.detach().clone())
    # Step 1 by the formula: v = lr g / sqrt(g^2 + eps), b = -v; step 2 leaves item 3 alone.
    assert biases[0][3].item() == pytest.approx(-0.1 * gradient / (gradient ** 2 + 1e-6) ** 0.5, rel=1e-5)
    assert biases[1][3] == biases[0][3] and biases[1][4] == biases[0][4] and biases[1][7] != 0
    assert torch.count_nonzero(biases[1]) == 4  # items 3, 4, 7, 8 only


def test_a_steps_gradient_stops_at_the_carried_state_as_the_authors(ml100k):
    # The author's training loop detaches the hidden state before every step (gru4rec_pytorch.py), so a step's
    # loss trains the weights through that step alone. Hand-made case: step 1 reads items 1-4, step 2 items
    # 11-14 from the carried state; only through time could step 2's loss reach the input rows of items 1-4.
    from recbole_gru4rec.session_data import CARRY_FIELD, INPUT_FIELD
    from recbole_gru4rec.steps.autograd import session_loss
    from recbole_gru4rec.steps.state import SessionState

    model = model_with(ml100k, dropout_prob_hidden=0.0)
    state = SessionState(model)
    first, second = torch.arange(1, 5), torch.arange(11, 15)

    def step(items, carry):
        return Interaction({INPUT_FIELD: items, CARRY_FIELD: torch.full((4,), carry), model.POS_ITEM_ID: items + 20})

    session_loss(model, state, step(first, 0.0))
    model.zero_grad()
    session_loss(model, state, step(second, 1.0)).backward()
    truncated = model.input_layer.weight.grad.to_dense()
    assert torch.count_nonzero(truncated[first]) == 0 and torch.count_nonzero(truncated[second]) > 0

    # The same two steps back-propagated through time do reach them: the check above can tell the two apart.
    model.zero_grad()
    _, carried = model.session_step(first, torch.zeros(1, 4, model.hidden_size))
    output, _ = model.session_step(second, carried)
    columns = model.negatives.columns(second + 20)
    model.loss_of_logits(model.logits(output, columns), columns, second + 20).backward()
    through_time = model.input_layer.weight.grad.to_dense()
    assert torch.count_nonzero(through_time[first]) > 0
    torch.testing.assert_close(through_time[second], truncated[second])  # and step 2's own rows alike
