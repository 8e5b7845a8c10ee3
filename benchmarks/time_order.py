"""How far the order RecBole gives each user's events is from their exact time order.

RecBole 1.2.1 stores float fields, timestamps included, as float32 (RecBole issues #1653, #2204): near 10^9
seconds (MovieLens' dates) float32 steps are 64 seconds apart, and ``order: TO`` sorts stably, so the events of
one user within one step keep their order in the data file. This script builds the dataset as every run does
(``pipeline.build_config`` and the protocol's split), puts each user's events in RecBole's order (training,
validation, test), and compares it with the exact timestamps read from the ``.inter`` file. Accuracy only, no
training; it needs each (user, item) pair once, as MovieLens has.

    python benchmarks/time_order.py --dataset=ml-1m-u2999
"""

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402


def recbole_order(config, dataset):
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


def main():
    """Print how RecBole's order of each user's events departs from their exact time order."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    args = parser.parse_args()
    overrides = {"state": "WARNING", **({"data_path": args.data_path} if args.data_path else {})}
    config = pipeline.build_config("Pop", args.dataset, overrides=overrides)
    events = recbole_order(config, pipeline.load_dataset(config)).merge(exact_times(config), on=["user", "item"],
                                                                        how="left", validate="one_to_one")
    same_user = events["user"].to_numpy()[1:] == events["user"].to_numpy()[:-1]
    exact, stored = events["exact_time"].to_numpy(), events["stored_time"].to_numpy()
    last = events.groupby("user").tail(1)
    latest = events.groupby("user")["exact_time"].max()
    tied_last = events.groupby("user")["stored_time"].apply(lambda t: len(t) > 1 and t.iloc[-1] == t.iloc[-2])
    tied_last_exact = events.groupby("user")["exact_time"].apply(lambda t: len(t) > 1 and t.iloc[-1] == t.iloc[-2])
    print(f"{args.dataset}: {len(events)} events of {events['user'].nunique()} users; stored timestamps are "
          f"{stored.dtype}, {np.spacing(np.float32(exact.max())):g} s apart at the latest time")
    print(f"consecutive events out of exact time order: {np.mean(exact[1:][same_user] < exact[:-1][same_user]):.1%}")
    print(f"consecutive events with the same stored / exact timestamp: {np.mean(stored[1:][same_user] == stored[:-1][same_user]):.1%}"
          f" / {np.mean(exact[1:][same_user] == exact[:-1][same_user]):.1%}")
    print(f"users whose test item is not one of their latest (exact) timestamp: "
          f"{np.mean(last['exact_time'].to_numpy() != latest.loc[last['user']].to_numpy()):.1%}")
    print(f"test items with the same stored / exact timestamp as the item before: {tied_last.mean():.1%} / "
          f"{tied_last_exact.mean():.1%}")


if __name__ == "__main__":
    main()
