"""Property tests (hypothesis) of the session-parallel loader over random small datasets."""

import itertools
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build, sessions_dataset_rows, write_inter
from recbole_gru4rec import SessionParallelDataLoader
from recbole_gru4rec.session_data import CARRY_FIELD, INPUT_FIELD, SessionParallelEpoch, Sessions

session_lists = st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=12), min_size=1, max_size=9)


def epoch_of(sessions, batch_size):
    items = np.array(list(itertools.chain.from_iterable(sessions)), dtype=np.int64)
    offsets = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    data = Sessions(items, offsets, np.arange(len(sessions), dtype=float))
    return SessionParallelEpoch(data, np.arange(len(sessions)), batch_size, "cpu")


@given(sessions=session_lists, batch_size=st.integers(1, 5))
def test_each_event_is_a_target_once_and_no_session_boundary_is_crossed_without_reset(sessions, batch_size):
    epoch = epoch_of(sessions, batch_size)
    expected = Counter((s, p) for s, items in enumerate(sessions) for p in range(1, len(items)))
    # Walk the steps: where a slot's state is carried, its session must go on at the next position.
    position_of_slot, seen = {}, Counter()
    session_starts = iter(s for s, items in enumerate(sessions) if len(items) >= 2)
    for t in range(len(epoch)):
        rows = range(epoch.bounds[t], epoch.bounds[t + 1])
        assert len(rows) <= batch_size
        for row, slot in zip(rows, epoch.step_slots(t)):
            if epoch.carry[row] == 0.0:
                session, position = next(session_starts), 0
            else:
                session, position = position_of_slot[slot]
                position += 1
            items = sessions[session]
            assert epoch.items[row] == items[position] and epoch.targets[row] == items[position + 1]
            seen[(session, position + 1)] += 1
            position_of_slot[slot] = (session, position)
    assert seen == expected


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 10), min_size=2, max_size=7).filter(lambda ls: max(ls) >= 2),
       batch_size=st.integers(1, 4))
def test_no_validation_or_test_item_is_ever_yielded(tmp_path_factory, lengths, batch_size):
    sessions = {user: [100 * user + p for p in range(length)] for user, length in enumerate(lengths, start=1)}
    folder = write_inter(tmp_path_factory.mktemp("random"), "random", sessions_dataset_rows(sessions))
    config, _, train, valid, test = build("GRU4RecPaper", "random", folder, train_batch_size=batch_size)
    tokens = train._dataset.field2id_token["item_id"]
    held_out_ids = valid._dataset.inter_feat["item_id"].tolist() + test._dataset.inter_feat["item_id"].tolist()
    held_out = {int(tokens[i]) for i in held_out_ids}
    assert len(held_out) == sum(min(2, max(0, n - 2)) for n in lengths)  # RecBole's leave-one-out, by hand
    for step in SessionParallelDataLoader(config, train._dataset):
        yielded = {int(tokens[i]) for i in step[INPUT_FIELD].tolist() + step["item_id"].tolist()}
        assert not yielded & held_out
        assert len(step[CARRY_FIELD]) <= batch_size


@given(sessions=session_lists, max_targets=st.integers(1, 4))
def test_split_sessions_keep_every_pair_once_and_stay_short(sessions, max_targets):
    items = np.array(list(itertools.chain.from_iterable(sessions)), dtype=np.int64)
    offsets = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    whole = Sessions(items, offsets, np.arange(len(sessions), dtype=float))
    pieces = whole.split(max_targets)

    def pairs(data):
        return Counter((a, b) for i in range(len(data.offsets) - 1) for a, b in itertools.pairwise(data.session(i)))

    assert pairs(pieces) == pairs(whole)  # the same (input, target) pairs, each once
    assert all(2 <= length <= max_targets + 1 for length in pieces.lengths)
    long_sessions = [s for s in sessions if len(s) >= 2]
    assert len(pieces.lengths) == sum(-(-(len(s) - 1) // max_targets) for s in long_sessions)
