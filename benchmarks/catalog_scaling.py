"""Training cost per event against catalog size: the same number of events over catalogs of 10^4 to 10^6 items.

    python benchmarks/catalog_scaling.py --items=10000,100000,1000000 --events=1200000 --output=results/catalog-scaling.json
    python benchmarks/catalog_scaling.py --plot=results/catalog-scaling.json   # the plot again, from the JSON

For each catalog size N the script writes a synthetic RecBole dataset (into a temporary folder): users with
sessions of 20-80 events, every item of the catalog occurring at least once (so the model's catalog is N), the
other events drawn from a Zipf-like popularity (weight 1 / rank). It trains GRU4RecPaper for ``--epochs`` epochs
in one setting (default: CE with 512 extra negatives, batch 64, hidden 100, the default step path: C++ where it
builds), without evaluation (a full ranking of 10^6 items for every user is not what is measured), and records
the median epoch's microseconds per training event, the peak resident memory, and the bytes per catalog item of
the item-indexed tensors (weights and their Adagrad state). Run it on a quiet machine: one run at a time.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole.data import create_dataset, data_preparation  # noqa: E402

from recbole_gru4rec import SessionParallelTrainer, pipeline  # noqa: E402
from recbole_gru4rec.gru4rec_paper import GRU4RecPaper  # noqa: E402
from recbole_gru4rec.leaderboard.runner import machine, versions  # noqa: E402

SETTING = {"loss_type": "CE", "final_activation": "linear", "train_batch_size": 64, "n_sample": 512,
           "hidden_size": 100, "learning_rate": 0.05, "dropout_prob_hidden": 0.0}


def write_dataset(folder, name, n_items, n_events, seed):
    """A RecBole dataset ``name`` in ``folder``: every item at least once, the rest by 1 / rank popularity."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    drawn = rng.choice(n_items, size=n_events - n_items, p=popularity / popularity.sum())
    items = rng.permutation(np.concatenate([np.arange(n_items), drawn])) + 1
    lengths = []
    while sum(lengths) < n_events:
        lengths.append(int(rng.integers(20, 81)))
    lengths[-1] -= sum(lengths) - n_events
    users = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    times = np.arange(n_events)  # one clock: sessions keep their order, and so do their events
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    with open(os.path.join(folder, name, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{t}\n" for u, i, t in zip(users.tolist(), items.tolist(), times.tolist()))


def bytes_per_item(model, optimizer):
    """Bytes of the item-indexed tensors (weights and their optimizer state) per catalog item."""
    total = 0
    for param in model.parameters():
        if param.shape[0] == model.n_items:
            state = optimizer.state.get(param, {})
            total += param.element_size() * param.numel() * (1 + len([v for v in state.values() if torch.is_tensor(v)]))
    return total / model.n_items


def measure(folder, name, epochs, overrides):
    """Train ``epochs`` epochs without evaluation; returns the measurements of one catalog."""
    config = pipeline.build_config("GRU4RecPaper", name, overrides={
        "data_path": folder, "epochs": epochs, "state": "ERROR", "show_progress": False, "MAX_ITEM_LIST_LENGTH": 2,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        **SETTING, **overrides})
    start = time.perf_counter()
    train, _, _ = data_preparation(config, create_dataset(config))
    load_seconds = time.perf_counter() - start
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    trainer.fit(train, None, saved=False, verbose=False)
    events = len(train._dataset)
    median = statistics.median(trainer.epoch_seconds)
    return {"catalog_items": trainer.model.n_items - 1, "training_events": events, "load_seconds": round(load_seconds, 1),
            "epoch_seconds": [round(s, 3) for s in trainer.epoch_seconds],
            "microseconds_per_event": round(1e6 * median / events, 3),
            "bytes_per_item": bytes_per_item(trainer.model, trainer.optimizer),
            "peak_rss_mb": round(pipeline.peak_rss_mb(), 1),
            "step_path": type(trainer.fused_training_step).__name__ if trainer.fused_training_step else "autograd"}


def plot(report, path):
    """Microseconds per training event against catalog size, one line per epoch (epoch 1 includes warming up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    catalogs = report["catalogs"]
    sizes = [row["catalog_items"] for row in catalogs]
    figure, axes = plt.subplots(figsize=(6, 4))
    for epoch in range(max(len(row["epoch_seconds"]) for row in catalogs)):
        costs = [1e6 * row["epoch_seconds"][epoch] / row["training_events"] for row in catalogs]
        axes.plot(sizes, costs, marker="o", label=f"epoch {epoch + 1}")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("catalog items (log scale)")
    axes.set_ylabel("microseconds per training event")
    axes.set_title(f"{report['events']:,} events, {report['machine']['cpu_cores']} CPU cores: "
                   f"{catalogs[0]['bytes_per_item']:.0f} bytes per item", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    """Run each catalog size (or only draw the plot of a JSON), write the JSON and its plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--events", type=int, default=1_200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--output", help="the JSON to write (the plot goes beside it, .png)")
    parser.add_argument("--plot", help="only draw the plot of this JSON")
    args, extra = parser.parse_known_args()
    if args.plot:
        with open(args.plot, encoding="utf-8") as f:
            plot(json.load(f), os.path.splitext(args.plot)[0] + ".png")
        return
    if not args.output:
        parser.error("--output is required")
    overrides = dict(arg[2:].split("=", 1) for arg in extra)  # --KEY=VALUE for GRU4RecPaper, as run.py
    overrides = {key: yaml.safe_load(value) for key, value in overrides.items()}
    report = {"command": " ".join(["python", *sys.argv]), "setting": {**SETTING, **overrides}, "events": args.events,
              "machine": machine(), "versions": versions(), "catalogs": []}
    with tempfile.TemporaryDirectory() as folder:
        for n_items in [int(n) for n in args.items.split(",")]:
            name = f"synthetic-{n_items}"
            write_dataset(folder, name, n_items, args.events, args.seed)
            row = measure(folder, name, args.epochs, overrides)
            report["catalogs"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.output, "w", encoding="utf-8") as f:  # after every catalog: a killed run keeps its part
                json.dump(report, f, indent=2)
    plot(report, os.path.splitext(args.output)[0] + ".png")
    smallest = report["catalogs"][0]["microseconds_per_event"]
    for row in report["catalogs"]:
        print(f"{row['catalog_items']:>9} items: {row['microseconds_per_event']:.2f} us/event "
              f"({row['microseconds_per_event'] / smallest:.2f}x the smallest), {row['bytes_per_item']:.0f} bytes/item")


if __name__ == "__main__":
    main()
