"""eval_history: full: evaluation carries the hidden state through each user's whole known history."""

import numpy as np
import pytest
import torch

from conftest import model_with
from recbole_gru4rec.session_data import Sessions

WINDOW = 4


def known():
    """User 1: training items 1..7; user 2: 5, 6; user 3: a repeating sequence 3, 3, 3, 3, 3, 3."""
    sessions = [[1, 2, 3, 4, 5, 6, 7], [5, 6], [3, 3, 3, 3, 3, 3]]
    offsets = np.cumsum([0] + [len(s) for s in sessions])
    return Sessions(np.concatenate(sessions), offsets, np.zeros(3), np.array([1, 2, 3]))


def rows(*sequences):
    items = torch.zeros(len(sequences), WINDOW, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        items[row, : len(sequence)] = torch.tensor(sequence)
    return items, torch.tensor([len(sequence) for sequence in sequences])


@pytest.mark.parametrize("user,row,expected,continued", [
    (1, [4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], 1),  # a validation row: the training sequence itself
    (1, [5, 6, 7, 9], [1, 2, 3, 4, 5, 6, 7, 9], 1),  # a test row: the validation item 9 after it
    (1, [6, 7, 9, 8], [1, 2, 3, 4, 5, 6, 7, 9, 8], 1),  # two items after it
    (3, [3, 3, 3, 8], [3, 3, 3, 3, 3, 3, 8], 1),  # repeats: the longest overlap, never an item too many
    (3, [3, 3, 3, 3], [3, 3, 3, 3, 3, 3], 1),
    (2, [5, 6, 1], [5, 6, 1], 0),  # not cut at the window: already the whole history
    (1, [7, 8, 9, 10], [7, 8, 9, 10], 0),  # one item of overlap is not enough (half the row is)
    (9, [1, 2, 3, 4], [1, 2, 3, 4], 0),  # a user without a training sequence
])
def test_whole_history_of_a_row(user, row, expected, continued):
    items, lengths = rows(row)
    whole, whole_lengths, count = known().whole_histories(torch.tensor([user]), items, lengths, WINDOW)
    assert whole[0, : whole_lengths[0]].tolist() == expected and count == continued
    assert whole.shape[1] == len(expected) and (whole[0, whole_lengths[0]:] == 0).all()


def test_full_history_scores_equal_stepping_through_the_whole_history(ml100k):
    config, dataset, train, valid, test = ml100k
    window = model_with(ml100k)
    size = window.hidden_size
    window.hidden_layers[0].bias.data[size : 2 * size] = 4.0  # update gates near 1: a long memory, so the far past shows
    full = model_with(ml100k, eval_history="full")
    full.load_state_dict(window.state_dict())
    full.eval(), window.eval()
    batch = test._dataset.inter_feat[:64]
    sessions = full.known_histories
    with torch.no_grad():
        scores = full.full_sort_predict(batch)
        windowed = window.full_sort_predict(batch)
        for row in range(len(batch)):
            user, target = int(batch["user_id"][row]), int(batch["item_id"][row])
            history = list(sessions.session(list(sessions.users).index(user)))
            history.append(int(batch["item_id_list"][row, batch["item_length"][row] - 1]))  # the validation item
            hidden = torch.zeros(full.num_layers, 1, full.hidden_size)
            for item in history:  # the session-parallel step, one event at a time, from a zero state
                output, hidden = full.session_step(torch.tensor([item]), hidden)
            expected = output @ full.output_weights.weight.T + full.output_bias
            torch.testing.assert_close(scores[row], expected[0], rtol=1e-4, atol=1e-4)
            if len(history) > config["MAX_ITEM_LIST_LENGTH"]:
                assert not torch.allclose(scores[row], windowed[row])  # the history before the window counts
            assert target not in history[-1:]  # the row's own target is never read


def test_full_history_trains_and_evaluates_end_to_end(tmp_path):
    from recbole_gru4rec import pipeline

    results = {history: pipeline.run("GRU4RecPaper", "ml-100k", overrides={
        "epochs": 1, "eval_history": history, "state": "ERROR", "MAX_ITEM_LIST_LENGTH": 20}, saved=False)
        for history in ("window", "full")}
    assert results["full"]["config"]["eval_history"] == "full"
    assert results["full"]["train_loss_per_epoch"] == results["window"]["train_loss_per_epoch"]  # training unchanged
    assert results["full"]["test_result"] != results["window"]["test_result"]
    for result in results.values():
        assert 0 < result["test_result"]["ndcg@10"] < 1
