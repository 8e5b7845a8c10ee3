"""A leaderboard's paired differences to its reference, split by test targets tied in time with the item before.

RecBole stores timestamps as float32 (README, "Time order"): a target whose stored timestamp equals that of the
item before it (its validation item) was rated within the same 64-second step, and such targets are far easier
on MovieLens. This script reads the leaderboard's rows and per-user files, as the table's paired tests do, and
repeats each entry's paired test against the reference within the tied and the untied test targets. No
training.

    python benchmarks/tie_split.py --dataset=ml-1m-u2999 --entries=GRU4Rec:default
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import evaluation, pipeline  # noqa: E402
from recbole_gru4rec.leaderboard.report import (  # noqa: E402
    TABLE_METRICS, Leaderboard, grouped, per_user_metrics, reference_entry)


def tied_test_targets(dataset_name, data_path):
    """``{user token: whether the test target's stored timestamp equals the validation item's}``."""
    overrides = {"state": "WARNING", **({"data_path": data_path} if data_path else {})}
    dataset = pipeline.load_dataset(pipeline.build_config("Pop", dataset_name, overrides=overrides))
    _, valid, test = dataset.build()

    def stored_times(part):
        feat = part.inter_feat
        return dict(zip(dataset.id2token(dataset.uid_field, feat[dataset.uid_field].numpy()),
                        feat[dataset.time_field].numpy()))

    valid_times, test_times = stored_times(valid), stored_times(test)
    return {user: user in valid_times and time == valid_times[user] for user, time in test_times.items()}


def seed_means(loaded):
    """An entry's per-user test metrics (its runs' files, loaded), each averaged over its seeds:
    ``(users, {metric: values})``."""
    means = {metric: evaluation.seed_mean(loaded, metric) for metric in TABLE_METRICS}
    users = next(iter(means.values()))[0]
    return users, {metric: values for metric, (_, values) in means.items()}


def main():
    """Print each chosen entry's paired difference to the reference, in all, tied and untied test targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m-u2999")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--output_dir", default="results", help="the leaderboard's folder")
    parser.add_argument("--entries", required=True, help="comma-separated entry keys, as MODEL:CONFIG_NAME")
    parser.add_argument("--metrics", default="ndcg@10,recall@10,recall@20")
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
    tied_of_user = tied_test_targets(args.dataset, args.data_path)
    reference_users, reference_values = seed_means(loaded[reference])
    tied = np.array([tied_of_user[str(user)] for user in reference_users])
    print(f"reference: {reference}; test targets tied with the item before: {tied.mean():.1%} of {len(tied)}")
    print("| entry | metric | all | tied | untied |\n|---|---|---:|---:|---:|")
    for key in entries:
        users, values = seed_means(loaded[key])
        if list(users) != list(reference_users):
            raise SystemExit(f"{key} and {reference} were tested on different users")
        for metric in metrics:
            cells = []
            for mask in (np.ones_like(tied), tied, ~tied):
                test = evaluation.paired_test(values[metric][mask], reference_values[metric][mask])
                cells.append(f"{test['difference']:+.4f} ± {test['standard_error']:.4f} (p {test['p_value']:.2g})")
            print(f"| {key} | {metric} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
