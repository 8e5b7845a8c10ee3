"""Training speed of GRU4RecPaper with its default options in each setting the author's code offers, against the
author's own code and RecBole's GRU4Rec, in alternating rounds, and against each setting's arithmetic bound.

The author's file is not part of this repository and never committed: get it into a folder outside the
repository (as for parity.py) and name it:

    python benchmarks/speed_vs_author.py --author_code=/tmp/author/gru4rec_pytorch.py --dataset=ml-100k \
        --rounds=3 --output=results/speed-vs-author-ml-100k.json

Each round runs, one after another and never in parallel: every GRU4RecPaper setting through run.py in its own
process (default options: ``cpp_step: auto`` picks the path), the author's code in the same setting in this
process (its own epoch timer, which leaves out building its data iterator), and RecBole's GRU4Rec with its
defaults through run.py. Ratios are taken within a round; the JSON keeps every round.

The arithmetic bound of a setting is the events per second a step could reach if it did nothing but its matrix
products: the forward and backward products of the GRU layer (the paper's cell: the gates from h, the candidate
from r * h; with an embedding also the input products) and of the scored columns, each timed here with
``torch.matmul`` in fp32 at its shape (a loop of calls, less the time of a call on a 1 x 1 product). It leaves out
the element-wise work (gates, losses, Adagrad), so no implementation reaches it.
"""

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402
import speed  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402

from recbole_gru4rec import pipeline  # noqa: E402
from recbole_gru4rec.leaderboard.runner import machine, versions  # noqa: E402
from recbole_gru4rec.steps import cpp as cpp_step  # noqa: E402

HIDDEN = 100
# The author's settings besides its defaults (hidasib/GRU4Rec_PyTorch_Official: layers [100], batch 64,
# learning rate 0.05, no dropout, no momentum, sample_alpha 0.5, 2048 extra negatives, shared embedding);
# ours are GRU4RecPaper's options for the same. Its PyTorch code offers cross-entropy and BPR-max only, so the
# paper's TOP1 setting has no author's run.
AUTHOR_BASE = {"layers": [HIDDEN], "batch_size": 64, "learning_rate": 0.05, "momentum": 0.0, "dropout_p_embed": 0.0,
               "dropout_p_hidden": 0.0, "sample_alpha": 0.5, "bpreg": 1.0, "elu_param": 0.5, "logq": 0.0}
OURS_BASE = ["--train_batch_size=64", "--learning_rate=0.05", "--dropout_prob_hidden=0", "--sample_alpha=0.5"]
SETTINGS = {
    "paper (TOP1, batch 50, 1-of-N, dropout 0.5)": {
        "ours": [], "author": None, "batch": 50, "n_sample": 0, "embedded": False},
    "CE + 512, 1-of-N": {
        "ours": OURS_BASE + ["--loss_type=CE", "--n_sample=512"],
        "author": dict(AUTHOR_BASE, loss="cross-entropy", n_sample=512, constrained_embedding=False, embedding=0),
        "batch": 64, "n_sample": 512, "embedded": False},
    "CE + 2048, shared embedding (the author's default)": {
        "ours": OURS_BASE + ["--loss_type=CE", "--n_sample=2048", "--constrained_embedding=True"],
        "author": dict(AUTHOR_BASE, loss="cross-entropy", n_sample=2048, constrained_embedding=True, embedding=0),
        "batch": 64, "n_sample": 2048, "embedded": True},
    "BPR-max + 2048, shared embedding (elu 0.5, bpreg 1)": {
        "ours": OURS_BASE + ["--loss_type=BPR-max", "--n_sample=2048", "--constrained_embedding=True", "--bpreg=1"],
        "author": dict(AUTHOR_BASE, loss="bpr-max", n_sample=2048, constrained_embedding=True, embedding=0),
        "batch": 64, "n_sample": 2048, "embedded": True},
}
BASELINE = speed.BASELINE


def matrix_products(batch, columns, embedded, hidden=HIDDEN):
    """The (m, k, n) matrix products of one training step of ``batch`` rows scoring ``columns`` items."""
    B, H, K = batch, hidden, columns
    forward = [(B, H, 2 * H), (B, H, H), (B, H, K)]  # gates z, r from h; candidate from r * h; scores
    backward = [(B, K, H), (K, B, H),  # the scores' gradient to h and to the scored rows
                (B, 2 * H, H), (B, H, H), (2 * H, B, H), (H, B, H)]  # through U: to h and to U
    if embedded:  # the input product W x with its two gradients (the shared embedding: x is an output row, H wide)
        forward.append((B, H, 3 * H))
        backward += [(3 * H, B, H), (B, 3 * H, H)]
    return forward + backward


def matmul_seconds(m, k, n, calls=200, repeats=15):
    """Seconds of one fp32 (m, k) @ (k, n) product here: the median over ``repeats`` of ``calls`` products in a
    loop, less the time of a 1 x 1 product (the cost of a call from Python, which a C++ loop does not pay)."""

    def per_call(m, k, n):
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(10):
            torch.matmul(a, b, out=out)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                torch.matmul(a, b, out=out)
            times.append((time.perf_counter() - start) / calls)
        return statistics.median(times)

    return max(per_call(m, k, n) - per_call(1, 1, 1), 1e-9)


def arithmetic_bound(setting):
    """FLOPs per training event and the events/s of a step made only of its matrix products, timed here."""
    products = matrix_products(setting["batch"], setting["batch"] + setting["n_sample"], setting["embedded"])
    flops = sum(2 * m * k * n for m, k, n in products)
    seconds = sum(matmul_seconds(*shape) for shape in products)
    return {"flops_per_event": flops / setting["batch"], "products": products,
            "matmul_gflops": round(flops / seconds / 1e9, 2), "bound_events_per_second": round(setting["batch"] / seconds)}


def run_author(author, frame, setting, epochs, seed):
    """Train the author's GRU4Rec on ``frame``; per-epoch seconds from its own timer, and events per epoch."""
    torch.manual_seed(seed)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gru = author.GRU4Rec(**setting, n_epochs=epochs, device=torch.device("cpu"))
        gru.fit(frame)
    epochs_seen = re.findall(r"Epoch\d+ --> loss: \S+ \t\(([\d.]+)s\)", printed.getvalue())
    if len(epochs_seen) != epochs:
        raise SystemExit(f"speed_vs_author.py: found {len(epochs_seen)} of {epochs} epoch lines in the author's output: "
                         f"{printed.getvalue()[-300:]!r}")
    seconds = [float(s) for s in epochs_seen]
    events = len(frame) - frame["SessionId"].nunique()  # every event but each session's last is an input
    median = statistics.median(seconds)
    return {"train_seconds_per_epoch": seconds, "median_epoch_seconds": median, "train_events_per_epoch": events,
            "train_events_per_second": round(events / median)}


def one_round(number, author, frame, args, workdir):
    """Every setting (ours, then the author's), then RecBole's GRU4Rec; ratios within this round."""
    rows = {}
    for name, setting in SETTINGS.items():
        ours = speed.run_model(name, ["--model=GRU4RecPaper", *setting["ours"]], args.dataset, args.data_path,
                               args.epochs, workdir)
        rows[name] = {"ours": ours}
        if setting["author"] is not None:
            rows[name]["author"] = run_author(author, frame, setting["author"], args.epochs, args.seed)
            print(f"round {number}, {name}: ours {ours['median_epoch_seconds']:.2f} s/epoch, author "
                  f"{rows[name]['author']['median_epoch_seconds']:.2f}", flush=True)
    baseline = speed.run_model(BASELINE, ["--model=GRU4Rec"], args.dataset, args.data_path, args.gru4rec_epochs, workdir)
    for row in rows.values():
        ours = row["ours"]
        ours["recbole_gru4rec_epoch_over_this"] = round(baseline["median_epoch_seconds"] / ours["median_epoch_seconds"], 1)
        if "author" in row:
            ours["author_epoch_over_this"] = round(row["author"]["median_epoch_seconds"] / ours["median_epoch_seconds"], 2)
    return {"round": number, "settings": rows, BASELINE: baseline}


def main():
    """Run the rounds (ours, the author's code, RecBole's GRU4Rec), then print and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--author_code", required=True, help="path to the author's gru4rec_pytorch.py")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of ours and of the author's code (median taken)")
    parser.add_argument("--gru4rec_epochs", type=int, default=1, help="epochs of RecBole's GRU4Rec")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    if not os.path.isfile(args.author_code):
        raise SystemExit(f"speed_vs_author.py: --author_code={args.author_code}: no such file")
    for name, value in (("epochs", args.epochs), ("gru4rec_epochs", args.gru4rec_epochs), ("rounds", args.rounds)):
        if value < 1:
            raise SystemExit(f"speed_vs_author.py: --{name}={value}: needs an integer >= 1")
    author = parity.load_author_code(args.author_code)
    cpp_step.load_extension()  # built (or loaded) before any run is timed
    overrides = {"data_path": args.data_path} if args.data_path else {}
    config = pipeline.build_config("GRU4RecPaper", args.dataset, overrides={**overrides, "state": "ERROR"})
    frame = parity.training_frame(data_preparation(config, create_dataset(config))[0]._dataset)
    report = {"command": " ".join(["python", *sys.argv]), "dataset": args.dataset, "machine": machine(),
              "versions": versions(), "torch_threads": torch.get_num_threads(),
              "bounds": {name: arithmetic_bound(setting) for name, setting in SETTINGS.items()}, "rounds": []}
    with tempfile.TemporaryDirectory() as workdir:
        for number in range(1, args.rounds + 1):
            report["rounds"].append(one_round(number, author, frame, args, workdir))
            with open(args.output, "w", encoding="utf-8") as f:  # after every round: a killed run keeps its part
                json.dump(report, f, indent=2)
                f.write("\n")
    summarise(report)


def summarise(report):
    """Print each setting's medians over the rounds, then its per-round ratios (a round whose run lost CPU to the
    hypervisor shows in the JSON's cpu_steal_percent)."""
    print(f"\n{report['dataset']}, {report['machine']['cpu']} ({report['machine']['cpu_cores']} cores), "
          f"torch {report['versions']['torch']}, {len(report['rounds'])} rounds")
    print(f"{'setting':<52} {'ours ev/s':>10} {'author ev/s':>11} {'x author':>9} {'x RecBole':>9} {'bound ev/s':>10} "
          f"{'of bound':>8} {'MFLOP/ev':>8}")
    per_round = {}
    for name in SETTINGS:
        rows = [one["settings"][name] for one in report["rounds"]]
        with_author = "author" in rows[0]
        ours = statistics.median(row["ours"]["train_events_per_second"] for row in rows)
        author = f"{statistics.median(row['author']['train_events_per_second'] for row in rows):.0f}" if with_author else "-"
        over_author = f"{statistics.median(row['ours']['author_epoch_over_this'] for row in rows):.2f}" if with_author else "-"
        over_recbole = statistics.median(row["ours"]["recbole_gru4rec_epoch_over_this"] for row in rows)
        bound = report["bounds"][name]
        print(f"{name:<52} {ours:10.0f} {author:>11} {over_author:>9} {over_recbole:9.1f} "
              f"{bound['bound_events_per_second']:10d} {ours / bound['bound_events_per_second']:8.0%} "
              f"{bound['flops_per_event'] / 1e6:8.2f}")
        per_round[name] = "; ".join(
            (f"{row['ours']['author_epoch_over_this']:.2f}x author, " if with_author else "")
            + f"{row['ours']['recbole_gru4rec_epoch_over_this']:.1f}x RecBole, steal {row['ours'].get('cpu_steal_percent', '?')} %"
            for row in rows)
    print("per round:")
    for name, text in per_round.items():
        print(f"  {name}: {text}")


if __name__ == "__main__":
    main()
