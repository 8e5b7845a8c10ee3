"""Session-parallel mini-batches (Hidasi et al. 2016, sec. 3.1.1) over RecBole's sequential training split.

``B`` sessions are laid side by side in ``B`` slots. Each step takes one event from every active slot: the
input is the slot's current item, the target the item after it. When a slot's session runs out, the slot
takes the next session and its hidden state is reset; when no session is left, the slot goes idle and the
steps get narrower. Every training event is a target exactly once per epoch.

On MovieLens a user's training history is the session. RecBole stores the training split prefix-augmented
(one row per target, with the items before it); :func:`user_sessions` turns it back into sequences, so
the validation and test items RecBole held out never reach training.
"""

import functools
import heapq

import numpy as np
import torch
from recbole.data.interaction import Interaction

SESSION_ORDERS = ("time", "shuffle")

# Field names of a session-parallel step; the target keeps RecBole's item field, as in RecBole's own batches.
INPUT_FIELD = "session_input_item"
CARRY_FIELD = "session_carry"  # 1.0 carries the slot's hidden state on, 0.0 zeroes it (a session starts)
ROWS_FIELD = "session_rows"  # only once slots go idle: which rows of the previous step go on


class Sessions:
    """Each user's events of a RecBole dataset: item ids laid end to end, with session boundaries."""

    def __init__(self, items, offsets, first_times, users=None):
        self.items = items
        self.offsets = offsets
        self.first_times = first_times
        self.users = users  # the user id of each session

    def session(self, index):
        """The item ids of session ``index``, in time order."""
        return self.items[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self):
        """Number of events in each session."""
        return np.diff(self.offsets)

    def split(self, max_targets):
        """Sessions cut into pieces of at most ``max_targets`` predictions (0: unchanged).

        Consecutive pieces share one event: the last target of a piece is the first input of the next, so
        every (input, target) pair of the original sessions is kept once and only the hidden state resets.
        """
        if max_targets <= 0:
            return self
        items, offsets, first_times, users = [], [0], [], []
        for index, (start, end) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            for piece_start in range(start, end - 1, max_targets):
                piece = self.items[piece_start : min(piece_start + max_targets + 1, end)]
                items.append(piece)
                offsets.append(offsets[-1] + len(piece))
                first_times.append(self.first_times[index])
                users.append(None if self.users is None else self.users[index])
        items = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)  # one-event sessions have no pair
        return Sessions(items, np.asarray(offsets, dtype=np.int64), np.asarray(first_times, dtype=float),
                        None if self.users is None else np.asarray(users))

    @functools.cached_property
    def index_of_user(self):
        """user id -> the index of that user's session."""
        return {int(user): index for index, user in enumerate(self.users)}

    def whole_histories(self, users, item_seq, item_seq_len, window):
        """Each evaluation row's whole history, for rows that RecBole cut to their last ``window`` items.

        A cut row continues its user's sequence here (validation rows: nothing after it; test rows: the
        validation item): its history is this sequence plus the row's items after the sequence's end. The
        overlap is the longest one, so a later item is never read into an earlier row's history, and at least
        half the row, so a chance match of a few items does not count. Rows not cut, and rows that continue no
        sequence here, keep their items. Returns (items, lengths, number of rows continued).
        """
        index_of_user = self.index_of_user
        histories, continued = [], 0
        for user, row, length in zip(users.tolist(), item_seq.cpu().numpy(), item_seq_len.tolist()):
            row = row[:length]
            history = row
            if length == window and user in index_of_user:
                known = self.session(index_of_user[user])
                for overlap in range(min(length, len(known)), max(length // 2, 1) - 1, -1):
                    if np.array_equal(known[len(known) - overlap:], row[:overlap]):
                        history, continued = np.concatenate([known, row[overlap:]]), continued + 1
                        break
            histories.append(history)
        lengths = torch.tensor([len(history) for history in histories], dtype=torch.long)
        items = torch.zeros(len(histories), int(lengths.max()), dtype=torch.long)
        for row, history in enumerate(histories):
            items[row, : len(history)] = torch.from_numpy(np.asarray(history, dtype=np.int64))
        return items.to(item_seq.device), lengths.to(item_seq.device), continued

    def item_support(self, n_items):
        """How often each item id occurs in the training sessions (a LongTensor of ``n_items``)."""
        return torch.from_numpy(np.bincount(self.items, minlength=n_items)).long()


def user_sessions(dataset):
    """Rebuild each user's sequence from a RecBole prefix-augmented dataset (the training split, or all data)."""
    config = dataset.config
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    time_field = dataset.time_field
    if time_field is None or time_field not in dataset.field2type:
        raise ValueError(
            f"dataset {config['dataset']!r} has no time field (TIME_FIELD={config['TIME_FIELD']!r}): "
            "session-parallel training needs the order of events"
        )
    list_suffix = config["LIST_SUFFIX"]
    inter = dataset.inter_feat
    users = inter[uid_field].numpy()
    if len(users) == 0:
        raise ValueError(f"dataset {config['dataset']!r} has no training events left after filtering and splitting")
    # RecBole keeps each user's rows in time order; a stable sort groups users without reordering them.
    order = np.argsort(users, kind="stable")
    users = users[order]
    targets = inter[iid_field].numpy()[order]
    prefix_lengths = inter[config["ITEM_LIST_LENGTH_FIELD"]].numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    if not (prefix_lengths[starts] == 1).all():
        raise ValueError("the training split does not start at each user's first event (is the data augmented?)")
    first_rows = torch.from_numpy(order[starts])
    first_items = inter[iid_field + list_suffix][first_rows, 0].numpy()
    first_times = inter[time_field + list_suffix][first_rows, 0].numpy()
    items = np.insert(targets, starts, first_items)
    offsets = np.r_[starts + np.arange(len(starts)), len(items)]
    return Sessions(items.astype(np.int64), offsets.astype(np.int64), first_times, users[starts])


def epoch_seed(seed, epoch):
    """The random seed of one training epoch: every epoch's randomness depends on (seed, epoch) only, so a
    run resumed at an epoch boundary draws what the uninterrupted run drew."""
    return int(seed or 0) * 1000003 + epoch


def session_parallel_schedule(lengths, batch_size):
    """Slot and first step of each session, filling ``batch_size`` slots in the given order.

    A session of length L occupies its slot for L - 1 steps (one per target). A freed slot takes the next
    session at once; slots freed at the same step are refilled in slot order.
    """
    n_steps = lengths - 1
    slots = np.zeros(len(lengths), dtype=np.int64)
    first_steps = np.zeros(len(lengths), dtype=np.int64)
    free_at = [(0, slot) for slot in range(min(batch_size, len(lengths)))]
    for session, steps in enumerate(n_steps.tolist()):
        step, slot = heapq.heappop(free_at)
        slots[session], first_steps[session] = slot, step
        heapq.heappush(free_at, (step + steps, slot))
    return slots, first_steps


class SessionParallelEpoch:
    """All steps of one epoch as flat tensors; step ``t`` is the slice ``bounds[t]:bounds[t + 1]``."""

    def __init__(self, sessions, order, batch_size, device):
        offsets = sessions.offsets[order]
        lengths = sessions.lengths[order]
        keep = lengths >= 2  # a session of one event has no target
        offsets, lengths = offsets[keep], lengths[keep]
        slots, first_steps = session_parallel_schedule(lengths, batch_size)

        n_targets = lengths - 1
        session_of_pair = np.repeat(np.arange(len(lengths)), n_targets)
        position = np.arange(n_targets.sum()) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets)
        step = first_steps[session_of_pair] + position
        slot = slots[session_of_pair]
        pair_order = np.lexsort((slot, step))
        source = (offsets[session_of_pair] + position)[pair_order]

        self.n_steps = int(step.max()) + 1 if len(step) else 0
        self.bounds = np.r_[0, np.cumsum(np.bincount(step, minlength=self.n_steps))].tolist()
        self.slots = slot[pair_order]
        self.items = torch.from_numpy(sessions.items[source]).to(device)
        self.targets = torch.from_numpy(sessions.items[source + 1]).to(device)
        self.carry = torch.from_numpy((position[pair_order] > 0).astype(np.float32)).to(device)
        self.rows = self._continuing_rows(device)

    def _continuing_rows(self, device):
        """For each step narrower than the one before: the previous rows whose slot is still active."""
        rows = {}
        for t in range(1, self.n_steps):
            previous = self.slots[self.bounds[t - 1] : self.bounds[t]]
            current = self.slots[self.bounds[t] : self.bounds[t + 1]]
            if len(current) < len(previous):
                rows[t] = torch.from_numpy(np.searchsorted(previous, current)).to(device)
        return rows

    def previous_rows(self):
        """For every event, the row of its slot in the step before (its own row index in step 0): a LongTensor."""
        widths = np.diff(self.bounds)
        rows = np.arange(self.bounds[-1]) - np.repeat(self.bounds[:-1], widths)
        for t, continuing in self.rows.items():
            rows[self.bounds[t] : self.bounds[t + 1]] = continuing.cpu().numpy()
        return torch.from_numpy(rows).to(self.items.device)

    def step_slots(self, t):
        """The slot of each row of step ``t``."""
        return self.slots[self.bounds[t] : self.bounds[t + 1]]

    def __len__(self):
        return self.n_steps


class SessionParallelDataLoader:
    """Yields one RecBole :class:`Interaction` per session-parallel step, for RecBole's trainer.

    A step holds, for each active slot in slot order: the input item (:data:`INPUT_FIELD`), the target
    (RecBole's ``ITEM_ID_FIELD``) and :data:`CARRY_FIELD`, 0.0 where the slot's session starts here so its
    hidden state must be zeroed. Once slots go idle at the end of an epoch, a narrower step also holds
    :data:`ROWS_FIELD`, the rows of the previous step that go on.
    """

    def __init__(self, config, dataset):
        order = config["session_order"] or "time"
        if order not in SESSION_ORDERS:
            raise ValueError(f"session_order={order!r} is not one of {', '.join(SESSION_ORDERS)}")
        self.config = config
        self.dataset = dataset
        self.batch_size = config["train_batch_size"]
        self.shuffle = order == "shuffle"
        self.sessions = user_sessions(dataset).split(config["session_max_targets"] or 0)
        self.target_field = config["ITEM_ID_FIELD"]
        self.device = config["device"] or torch.device("cpu")
        self.epoch = 0
        self.time_order = np.argsort(self.sessions.first_times, kind="stable")
        self._epoch_cache = None

    def _session_order(self, epoch):
        if not self.shuffle:
            return self.time_order
        generator = torch.Generator().manual_seed(epoch_seed(self.config["seed"], epoch))
        return torch.randperm(len(self.time_order), generator=generator).numpy()

    def _epoch(self, epoch):
        if self._epoch_cache is None or (self.shuffle and self._epoch_cache[0] != epoch):
            order = self._session_order(epoch)
            self._epoch_cache = (epoch, SessionParallelEpoch(self.sessions, order, self.batch_size, self.device))
        return self._epoch_cache[1]

    def set_epoch(self, epoch):
        """Make the next iteration produce epoch ``epoch`` (its shuffle depends on the epoch number only)."""
        self.epoch = epoch

    def __len__(self):
        return len(self._epoch(self.epoch))

    def next_epoch(self):
        """The steps of the next epoch as one :class:`SessionParallelEpoch` (what iterating would yield)."""
        steps = self._epoch(self.epoch)
        self.epoch += 1
        return steps

    def __iter__(self):
        steps = self.next_epoch()
        bounds = steps.bounds
        for t in range(steps.n_steps):
            a, b = bounds[t], bounds[t + 1]
            step = {INPUT_FIELD: steps.items[a:b], self.target_field: steps.targets[a:b], CARRY_FIELD: steps.carry[a:b]}
            if t in steps.rows:
                step[ROWS_FIELD] = steps.rows[t]
            yield Interaction(step)
