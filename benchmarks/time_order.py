"""How far the order RecBole gives each user's events is from their exact time order.

RecBole 1.2.1 stores float fields, timestamps included, as float32 (RecBole issues #1653, #2204): near 10^9
seconds (MovieLens' dates) float32 steps are 64 seconds apart, and ``order: TO`` sorts stably, so the events of
one user within one step keep their order in the data file. This script builds the dataset as every run does
(``pipeline.data_only_config`` and the protocol's split), puts each user's events in RecBole's order (training,
validation, test), and compares it with the exact timestamps read from the ``.inter`` file. Accuracy only, no
training; it needs each (user, item) pair once, as MovieLens has. ``--sorted_copy=DIR`` also writes the dataset
with its ``.inter`` rows sorted by their exact timestamp: RecBole's stable sort keeps that order within a
float32 step, so runs with ``--data_path=DIR`` see each user's events in exact time order.

    python benchmarks/time_order.py --dataset=ml-1m-u2999 [--sorted_copy=/tmp/ml-1m-u2999-sorted]
"""

import argparse
import os
import shutil
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402


def recbole_order(dataset):
    """Every event as (user token, item token, stored timestamp), each user's in RecBole's order."""
    user, item, time = dataset.uid_field, dataset.iid_field, dataset.time_field
    parts = []
    for rank, part in enumerate(dataset.build()):
        feat = part.inter_feat
        parts.append(pd.DataFrame({
            "user": dataset.id2token(user, feat[user].numpy()), "item": dataset.id2token(item, feat[item].numpy()),
            "stored_time": feat[time].numpy(), "part": rank, "place": np.arange(len(feat))}))
    # Within a part each user's rows are already in RecBole's order; parts come one after another.
    return pd.concat(parts).sort_values(["user", "part", "place"], kind="stable").reset_index(drop=True)


def exact_times(config):
    """The .inter file's (user, item, timestamp) as written, timestamps as float64."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    frame = pd.read_csv(path, sep=config["field_separator"], dtype=str)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    names = {config["USER_ID_FIELD"]: "user", config["ITEM_ID_FIELD"]: "item", config["TIME_FIELD"]: "exact_time"}
    frame = frame[list(names)].rename(columns=names)
    frame["exact_time"] = frame["exact_time"].astype(np.float64)
    if frame.duplicated(["user", "item"]).any():
        raise SystemExit(f"{path}: a (user, item) pair occurs more than once; this script matches events by the pair")
    return frame


def write_sorted_copy(config, folder):
    """Copy the dataset's atomic files into ``folder``/DATASET, the ``.inter`` rows sorted by exact timestamp."""
    source, name = config["data_path"], config["dataset"]
    target = os.path.join(folder, name)
    os.makedirs(target, exist_ok=True)
    for file in os.listdir(source):
        if file.startswith(f"{name}.") and file != f"{name}.inter":
            shutil.copyfile(os.path.join(source, file), os.path.join(target, file))
    frame = pd.read_csv(os.path.join(source, f"{name}.inter"), sep=config["field_separator"], dtype=str)
    time_column = next(column for column in frame.columns if column.split(":")[0] == config["TIME_FIELD"])
    frame = frame.sort_values(time_column, key=lambda column: column.astype(np.float64), kind="stable")
    frame.to_csv(os.path.join(target, f"{name}.inter"), sep=config["field_separator"], index=False)
    print(f"wrote {target}: use --data_path={folder}")


def main():
    """Print how RecBole's order of each user's events departs from their exact time order."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--sorted_copy", default=None, help="a folder to write the dataset sorted by exact time into")
    args = parser.parse_args()
    config = pipeline.data_only_config(args.dataset, args.data_path)
    copy_folder = args.sorted_copy and os.path.abspath(os.path.join(args.sorted_copy, args.dataset))
    if copy_folder == os.path.abspath(config["data_path"]):
        raise SystemExit(f"--sorted_copy={args.sorted_copy}: the dataset is read from there; choose another folder")
    exact_file = exact_times(config)  # first: its one-line error comes before the dataset is built
    events = recbole_order(pipeline.load_dataset(config)).merge(exact_file, on=["user", "item"], how="left",
                                                                validate="one_to_one")
    same_user = events["user"].to_numpy()[1:] == events["user"].to_numpy()[:-1]
    exact, stored = events["exact_time"].to_numpy(), events["stored_time"].to_numpy()
    last = events.groupby("user").tail(1)
    latest = events.groupby("user")["exact_time"].max()
    tied_last = events.groupby("user")["stored_time"].apply(lambda t: len(t) > 1 and t.iloc[-1] == t.iloc[-2])
    tied_last_exact = events.groupby("user")["exact_time"].apply(lambda t: len(t) > 1 and t.iloc[-1] == t.iloc[-2])
    print(f"{args.dataset}: {len(events)} events of {events['user'].nunique()} users; stored timestamps are "
          f"{stored.dtype}, {np.spacing(np.float32(exact.max())):g} s apart at the latest time")
    print(f"consecutive events out of exact time order: {np.mean(exact[1:][same_user] < exact[:-1][same_user]):.1%}")
    print(f"consecutive events with the same stored / exact timestamp: "
          f"{np.mean(stored[1:][same_user] == stored[:-1][same_user]):.1%} / "
          f"{np.mean(exact[1:][same_user] == exact[:-1][same_user]):.1%}")
    print(f"users whose test item is not among those of their latest exact timestamp: "
          f"{np.mean(last['exact_time'].to_numpy() != latest.loc[last['user']].to_numpy()):.1%}")
    print(f"test items with the same stored / exact timestamp as the item before: {tied_last.mean():.1%} / "
          f"{tied_last_exact.mean():.1%}")
    if args.sorted_copy:
        write_sorted_copy(config, args.sorted_copy)


if __name__ == "__main__":
    main()
