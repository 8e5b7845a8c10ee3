"""A short GRU4RecPaper run on ml-100k against a most-popular ranking computed here, from the same split."""

import math

import torch

from conftest import build
from recbole_gru4rec import GRU4RecPaper, SessionParallelTrainer
from recbole_gru4rec.session_data import user_sessions

# A short budget with the CIKM 2018 loss; the tuned configuration does better with more epochs.
SHORT_RUN = {
    "loss_type": "BPR-max",
    "final_activation": "elu-0.5",
    "n_sample": 256,
    "dropout_prob_hidden": 0.2,
    "learning_rate": 0.05,
    "epochs": 3,
    "eval_step": 3,
}


def most_popular_ndcg_at_10(train, test):
    """NDCG@10 of ranking every item by its count among the training events, for each test target."""
    counts = torch.from_numpy(user_sessions(train._dataset).item_support(train._dataset.item_num).numpy())
    counts[0] = -1  # padding is never recommended
    targets = test._dataset.inter_feat["item_id"]
    total = 0.0
    for target in targets.tolist():
        rank = int((counts > counts[target]).sum()) + 1  # ties count in the target's favour
        total += 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0
    return total / len(targets)


def test_short_training_beats_most_popular():
    config, _, train, valid, test = build("GRU4RecPaper", "ml-100k", **SHORT_RUN)
    torch.manual_seed(config["seed"])
    model = GRU4RecPaper(config, train._dataset)
    trainer = SessionParallelTrainer(config, model)
    trainer.fit(train, valid, saved=True, verbose=False)
    result = trainer.evaluate(test, load_best_model=True)
    popular = most_popular_ndcg_at_10(train, test)
    assert result["ndcg@10"] > 1.3 * popular, (result["ndcg@10"], popular)
