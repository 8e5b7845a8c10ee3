"""Session-parallel loader invariants on a hand-made dataset where every event has its own item id."""

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import build, sessions_dataset_rows, write_inter
from recbole_gru4rec import GRU4RecPaper, SessionParallelDataLoader
from recbole_gru4rec.session_data import CARRY_FIELD, INPUT_FIELD, ROWS_FIELD, SessionParallelEpoch, Sessions
from recbole_gru4rec.steps.state import SessionState

# user -> number of events; user 1 has no target at all, users 2 and 3 keep a training session of 2 events.
LENGTHS = {1: 1, 2: 3, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 9, 9: 12, 10: 15, 11: 20, 12: 25}
BATCH = 3


def unique_item_sessions():
    """Item id 100*user + position: each event is identifiable, and ids never repeat."""
    return {user: [100 * user + position for position in range(length)] for user, length in LENGTHS.items()}


def held_out_count(items):
    """RecBole's leave-one-out: of a user's n - 1 targets, the last min(2, n - 2) go to test and validation."""
    return max(0, min(2, len(items) - 2))


def expected_training_pairs(sessions):
    """The (input, target) pairs that RecBole's training split must hold, worked out from the raw events."""
    pairs = []
    for items in sessions.values():
        training = items[: len(items) - held_out_count(items)]
        pairs += list(zip(training[:-1], training[1:]))
    return pairs


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    sessions = unique_item_sessions()
    rows = sessions_dataset_rows(sessions)
    # The time order of users differs from their id order: user u starts at time 1000 * ((7 * u) % 13).
    rows = [(u, i, t - 1000 * u + 1000 * ((7 * u) % 13)) for u, i, t in rows]
    folder = write_inter(tmp_path_factory.mktemp("data"), "handmade", rows)
    config, data, train, valid, test = build("GRU4RecPaper", "handmade", folder, train_batch_size=BATCH)
    return sessions, config, train


def with_options(config, **options):
    """A copy of ``config`` with ``options`` changed (the module's fixture stays as it was)."""
    changed = copy.deepcopy(config)
    for key, value in options.items():
        changed[key] = value
    return changed


def raw_steps(sessions, config, train, **options):
    loader = SessionParallelDataLoader(with_options(config, **options), train._dataset)
    ids = train._dataset.field2id_token["item_id"]
    steps = []
    for step in loader:
        steps.append(
            {
                "inputs": [int(ids[i]) for i in step[INPUT_FIELD].tolist()],
                "targets": [int(ids[i]) for i in step["item_id"].tolist()],
                "carry": step[CARRY_FIELD].tolist(),
                "rows": step[ROWS_FIELD].tolist() if ROWS_FIELD in step else None,
            }
        )
    return loader, steps


def test_every_training_event_is_a_target_exactly_once(handmade):
    sessions, config, train = handmade
    _, steps = raw_steps(sessions, config, train)
    pairs = [pair for step in steps for pair in zip(step["inputs"], step["targets"])]
    assert Counter(pairs) == Counter(expected_training_pairs(sessions))
    assert len(pairs) == len(set(pairs))


def test_no_validation_or_test_item_reaches_training(handmade):
    sessions, config, train = handmade
    _, steps = raw_steps(sessions, config, train)
    held_out = {item for items in sessions.values() if held_out_count(items) for item in items[-held_out_count(items):]}
    seen = {item for step in steps for item in step["inputs"] + step["targets"]}
    assert not seen & held_out


def test_state_resets_exactly_where_a_session_starts(handmade):
    sessions, config, train = handmade
    loader, steps = raw_steps(sessions, config, train)
    epoch = loader._epoch(0)
    previous_target_of_slot = {}
    for t, step in enumerate(steps):
        for slot, item, target, carry in zip(epoch.step_slots(t), step["inputs"], step["targets"], step["carry"]):
            user, position = divmod(item, 100)
            assert carry == (0.0 if position == 0 else 1.0)
            if carry:
                assert previous_target_of_slot[slot] == item  # the same session goes on in the same slot
            assert target == item + 1
            previous_target_of_slot[slot] = target


def test_session_max_targets_resets_the_state_every_so_many_targets(handmade):
    sessions, config, train = handmade
    _, steps = raw_steps(sessions, config, train, session_max_targets=4)
    pairs = [(i, t) for step in steps for i, t in zip(step["inputs"], step["targets"])]
    assert Counter(pairs) == Counter(expected_training_pairs(sessions))  # every target still once
    for step in steps:
        for item, carry in zip(step["inputs"], step["carry"]):
            assert carry == (0.0 if item % 100 % 4 == 0 else 1.0)  # pieces start at positions 0, 4, 8, ...


def test_last_partial_batches_narrow_and_keep_their_rows(handmade):
    sessions, config, train = handmade
    loader, steps = raw_steps(sessions, config, train)
    epoch = loader._epoch(0)
    widths = [len(step["inputs"]) for step in steps]
    assert widths[0] == BATCH and max(widths) == BATCH and widths[-1] < BATCH
    assert widths == sorted(widths, reverse=True)  # once a slot is idle it stays idle
    for t in range(1, len(steps)):
        previous, current = epoch.step_slots(t - 1), epoch.step_slots(t)
        if widths[t] < widths[t - 1]:
            assert previous[steps[t]["rows"]].tolist() == current.tolist()
        else:
            assert steps[t]["rows"] is None and previous.tolist() == current.tolist()


def test_sessions_enter_in_order_of_their_first_timestamp(handmade):
    sessions, config, train = handmade
    _, steps = raw_steps(sessions, config, train)
    starts = [item // 100 for step in steps for item, carry in zip(step["inputs"], step["carry"]) if carry == 0.0]
    trained_users = [user for user, items in sessions.items() if len(items) - held_out_count(items) >= 2]
    assert starts == sorted(trained_users, key=lambda user: (7 * user) % 13)


def test_shuffle_changes_the_order_each_epoch_but_not_the_events(handmade):
    sessions, config, train = handmade
    loader, _ = raw_steps(sessions, config, train, session_order="shuffle")
    ids = train._dataset.field2id_token["item_id"]
    epochs = []
    for _ in range(3):
        steps = list(loader)
        epochs.append([(int(ids[i]), int(ids[j])) for s in steps for i, j in zip(s[INPUT_FIELD].tolist(), s["item_id"].tolist())])
    assert Counter(epochs[0]) == Counter(epochs[1]) == Counter(expected_training_pairs(sessions))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_batch_larger_than_the_number_of_sessions_and_a_one_event_session():
    sessions = Sessions(np.array([1, 2, 3, 4, 5, 6]), np.array([0, 3, 5, 6]), np.array([0.0, 1.0, 2.0]))
    epoch = SessionParallelEpoch(sessions, np.arange(3), batch_size=8, device="cpu")
    assert epoch.items.tolist() == [1, 4, 2] and epoch.targets.tolist() == [2, 5, 3]
    assert epoch.bounds == [0, 2, 3]


def test_carried_state_equals_reading_each_session_from_the_start(handmade):
    """The model's hidden state after a session-parallel step equals a fresh pass over that session's prefix."""
    sessions, config, train = handmade
    config = with_options(config, dropout_prob_hidden=0.0)
    torch.manual_seed(0)
    model = GRU4RecPaper(config, train._dataset).eval()
    loader = SessionParallelDataLoader(config, train._dataset)
    state = SessionState(model)
    tokens = train._dataset.field2id_token["item_id"]
    to_index = {int(token): index for index, token in enumerate(tokens) if token != "[PAD]"}
    with torch.no_grad():
        for step in loader:
            carried, state.hidden = model.session_step(step[INPUT_FIELD], state.carried(step))
            prefixes = []
            for item in step[INPUT_FIELD].tolist():
                user, position = divmod(int(tokens[item]), 100)
                prefixes.append([to_index[100 * user + p] for p in range(position + 1)])
            length = max(len(p) for p in prefixes)
            sequences = torch.tensor([p + [0] * (length - len(p)) for p in prefixes])
            fresh = model.forward(sequences, torch.tensor([len(p) for p in prefixes]))
            torch.testing.assert_close(carried, fresh, rtol=1e-5, atol=1e-6)
