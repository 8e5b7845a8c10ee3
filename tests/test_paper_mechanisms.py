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


def test_logq_subtracts_the_log_of_training_popularity(ml100k):
    model, train = model_with(ml100k, loss_type="CE", final_activation="linear", logq=0.7, n_sample=16), ml100k[2]
    # Training events counted from RecBole's prefix rows: every target, plus each user's first event.
    rows = train._dataset.inter_feat
    first_events = rows["item_id_list"][rows["item_length"] == 1, 0]
    counts = (torch.bincount(rows["item_id"], minlength=model.n_items)
              + torch.bincount(first_events, minlength=model.n_items)).double()
    columns = torch.tensor([50, 1, 300, 7])
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    expected = logits - 0.7 * torch.log(counts[columns].clamp(min=1) / counts.sum()).float()
    torch.testing.assert_close(model.scores(logits, columns), expected)
    # The sign: the more popular of two items with equal logits loses more of its score.
    popular, rare = sorted(columns.tolist(), key=lambda item: -counts[item])[0], min(columns.tolist(), key=lambda item: counts[item])
    scores = model.scores(torch.zeros(1, 2), torch.tensor([popular, rare]))
    assert counts[popular] > counts[rare] and scores[0, 0] < scores[0, 1]
    # The sampled cross-entropy of those corrected scores, by hand: -log softmax of the target over its row.
    targets = columns.clone()
    manual = (torch.logsumexp(expected, dim=1) - expected.diagonal()).mean()
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
    model = model_with(ml100k, dropout_prob_hidden=0.0, **options)
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
