"""A leaderboard's paired differences to its reference, within groups of the test users.

The groups (``--by``): ``tie``, whether the test target's stored timestamp equals that of the item before it
(RecBole stores timestamps as float32, README "Time order": such a target was rated within the same 64-second
step, and such targets are far easier on MovieLens); ``history``, the user's number of training events, and
``target_popularity``, the test target's number of training events, each cut into five groups of about equal
size. This script reads the leaderboard's rows and per-user files, as the table's paired tests do, and repeats
each entry's paired test against the reference within each group. No training.

    python benchmarks/paired_split.py --dataset=ml-1m-u2999 --entries=GRU4Rec:default [--by=history]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import evaluation, pipeline  # noqa: E402
from recbole_gru4rec.leaderboard.report import (  # noqa: E402
    TABLE_METRICS, Leaderboard, grouped, per_user_metrics, reference_entry)


GROUPINGS = ("tie", "history", "target_popularity")


def groups_of_test_users(dataset_name, data_path, by):
    """``({user token: group name}, group names in order)`` of the test users, grouped ``by`` one of :data:`GROUPINGS`."""
    dataset = pipeline.load_dataset(pipeline.data_only_config(dataset_name, data_path))
    train, valid, test = dataset.build()
    user_ids = test.inter_feat[dataset.uid_field].numpy()
    users = dataset.id2token(dataset.uid_field, user_ids)
    if by == "tie":
        valid_time = dict(zip(valid.inter_feat[dataset.uid_field].numpy(), valid.inter_feat[dataset.time_field].numpy()))
        test_times = test.inter_feat[dataset.time_field].numpy()
        return {user: "tied" if valid_time.get(uid) == time else "untied"
                for user, uid, time in zip(users, user_ids, test_times)}, ["tied", "untied"]
    if by == "history":
        values = np.bincount(train.inter_feat[dataset.uid_field].numpy(), minlength=dataset.user_num)[user_ids]
    else:
        counts = np.bincount(train.inter_feat[dataset.iid_field].numpy(), minlength=dataset.item_num)
        values = counts[test.inter_feat[dataset.iid_field].numpy()]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 6)).round().astype(int))
    group = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    names = [f"{by} {low}-{high - 1}" for low, high in zip(edges[:-1], edges[1:])]
    names[-1] = f"{by} {edges[-2]}-{edges[-1]}"  # the last group holds its upper edge
    return {user: names[index] for user, index in zip(users, group)}, names


def seed_means(loaded):
    """An entry's per-user test metrics (its runs' files, loaded), each averaged over its seeds:
    ``(users, {metric: values})``."""
    means = {metric: evaluation.seed_mean(loaded, metric) for metric in TABLE_METRICS}
    users = next(iter(means.values()))[0]
    return users, {metric: values for metric, (_, values) in means.items()}


def main():
    """Print each chosen entry's paired difference to the reference, in all test users and in each group."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m-u2999")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--output_dir", default="results", help="the leaderboard's folder")
    parser.add_argument("--entries", required=True, help="comma-separated entry keys, as MODEL:CONFIG_NAME")
    parser.add_argument("--metrics", default="ndcg@10,recall@10,recall@20")
    parser.add_argument("--by", default="tie", choices=GROUPINGS, help="how the test users are grouped")
    args = parser.parse_args()
    board = Leaderboard(args.dataset, args.output_dir)
    groups = grouped(board.rows)
    reference = reference_entry(board.header, groups)
    entries, metrics = args.entries.split(","), args.metrics.split(",")
    for metric in metrics:
        if metric not in TABLE_METRICS:
            raise SystemExit(f"--metrics: {metric!r} is not one of {', '.join(TABLE_METRICS)}")
    loaded = {}
    for key in [reference, *entries]:
        if key not in groups:
            raise SystemExit(f"--entries: {key!r} is not an entry of {board.json_file} ({', '.join(groups)})")
        loaded[key] = per_user_metrics(groups[key], board.folder)
        if loaded[key] is None:
            raise SystemExit(f"{key}: a run has no per-user file, so it cannot be paired")
    group_of_user, names = groups_of_test_users(args.dataset, args.data_path, args.by)
    reference_users, reference_values = seed_means(loaded[reference])
    groups_of_users = np.array([group_of_user[str(user)] for user in reference_users])
    masks = [np.ones(len(groups_of_users), dtype=bool)] + [groups_of_users == name for name in names]
    sizes = ", ".join(f"{name}: {mask.sum()}" for name, mask in zip(names, masks[1:]))
    print(f"reference: {reference}; test users by {args.by}: {sizes}")
    print(f"| entry | metric | all | {' | '.join(names)} |\n|---|---|{'---:|' * len(masks)}")
    for key in entries:
        users, values = seed_means(loaded[key])
        if list(users) != list(reference_users):
            raise SystemExit(f"{key} and {reference} were tested on different users")
        for metric in metrics:
            cells = []
            for mask in masks:
                test = evaluation.paired_test(values[metric][mask], reference_values[metric][mask])
                cells.append(f"{test['difference']:+.4f} ± {test['standard_error']:.4f} (p {test['p_value']:.2g})")
            print(f"| {key} | {metric} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
