"""Where a trained model's NDCG@10 falls along each user's sequence: test, validation, and in-sample targets.

Reads a checkpoint saved by a run (RecBole's ``load_data_and_model``: the same data, split and model) and scores
the test target, the validation target, and the training targets k steps before the validation one (the model
was trained on those: in-sample), each from the context RecBole's evaluation gives it. It also counts how many of
the top 10 are items the user already rated: RecBole's sequential evaluation does not mask them, and a
MovieLens user rates each movie once, so each is a wasted slot. And it splits NDCG@10 by whether the target's
timestamp ties with the item's before it, as RecBole stores them: as float32 (RecBole issues #1653, #2204), in
steps of 64 seconds at MovieLens' dates, and tied events keep their order in the ratings file. Written to look
into the validation-to-test drop of NDCG@10 that differs between models on ml-1m-u2999 (README, "Leaderboard").

    python benchmarks/position_gap.py saved/GRU4RecPaper-....pth --steps_back=1,2,5
"""

import argparse
import os
import sys

import numpy as np
import torch
from recbole.quick_start import load_data_and_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec.session_data import user_sessions  # noqa: E402  (importing the package registers the plugin)

TOP = 10


def step_back(seq, lengths, steps):
    """The rows with their last ``steps`` context items removed, and the item removed last (the new target)."""
    seq, target = seq.clone(), None
    rows = torch.arange(len(seq))
    for _ in range(steps):
        lengths = lengths - 1
        target = seq[rows, lengths].clone()
        seq[rows, lengths] = 0
    return seq, lengths, target


def evaluate(model, loader, seen_of_user, steps_back=0):
    """Per row of ``loader``: NDCG@10, the count of already-rated items in the top 10, and whether the target's
    stored timestamp ties with the item's before it (the pipeline refuses datasets without timestamps)."""
    time_field = loader._dataset.time_field
    time_list_field = f"{time_field}{loader._dataset.config['LIST_SUFFIX']}"
    ndcgs, seen_counts, tied = [], [], []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, targets in loader:
            seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            rows = torch.arange(len(seq))
            times, target_times = interaction[time_list_field], interaction[time_field]
            if steps_back:
                if int(lengths.min()) <= steps_back:
                    raise SystemExit(f"--steps_back={steps_back}: a user has only {int(lengths.min())} context items; "
                                     "use fewer steps")
                seq, lengths, targets = step_back(seq, lengths, steps_back)
                target_times = times[rows, lengths]
            tied += (target_times == times[rows, lengths - 1]).tolist()
            interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN] = seq, lengths
            scores = model.full_sort_predict(interaction).view(len(seq), -1)
            scores[:, 0] = -np.inf  # the padding item, as RecBole's evaluation
            ranks = (scores > scores[rows, targets][:, None]).sum(1)
            top = scores.topk(TOP).indices
            for row, user in enumerate(interaction[model.USER_ID].tolist()):
                rank = int(ranks[row])
                ndcgs.append(1.0 / np.log2(rank + 2) if rank < TOP else 0.0)
                rated = seen_of_user.get(user, set()) | set(seq[row, : lengths[row]].tolist())
                seen_counts.append(len(rated & set(top[row].tolist())))
    return np.array(ndcgs), np.array(seen_counts), np.array(tied)


def split_cells(ndcgs, tied):
    """The table cells that split NDCG@10 by whether the target's stored timestamp ties with the item's before it."""
    return f"{tied.mean():.1%} | {ndcgs[tied].mean():.4f} | {ndcgs[~tied].mean():.4f}"


def main():
    """Print NDCG@10, already-rated items in the top 10 and the split by timestamp ties at each position."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a model file saved by a run (checkpoint_dir)")
    parser.add_argument("--steps_back", default="1,2,5", help="in-sample targets: steps before the validation target")
    args = parser.parse_args()
    _, model, _, train_data, valid_data, test_data = load_data_and_model(args.checkpoint)
    sessions = user_sessions(train_data._dataset)
    # Training items only: a row's own context adds what came after (the validation item, for test rows).
    seen_of_user = {user: set(sessions.session(index).tolist()) for user, index in sessions.index_of_user.items()}
    positions = [("test", test_data, 0), ("validation", valid_data, 0)]
    positions += [(f"training, {k} before validation", valid_data, k) for k in map(int, args.steps_back.split(","))]
    print(f"{os.path.basename(args.checkpoint)}")
    print(f"| target | NDCG@{TOP} | already-rated items in the top {TOP} | targets tied with the item before "
          f"(stored timestamp) | their NDCG@{TOP} | NDCG@{TOP} of the others |\n|---|---:|---:|---:|---:|---:|")
    for name, loader, steps in positions:
        ndcgs, seen, tied = evaluate(model, loader, seen_of_user, steps)
        print(f"| {name} | {ndcgs.mean():.4f} | {seen.mean():.2f} | {split_cells(ndcgs, tied)} |", flush=True)


if __name__ == "__main__":
    main()
