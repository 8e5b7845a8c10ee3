"""Parity with the author's GRU4Rec (hidasib/GRU4Rec_PyTorch_Official, ``gru4rec_pytorch.py``) under this
project's protocol, several seeds, a paired test over users.

The author's file is not part of this repository and never committed: get it into a folder outside the
repository (e.g. ``git clone https://github.com/hidasib/GRU4Rec_PyTorch_Official /tmp/author``) and name it:

    python benchmarks/parity.py --author_code=/tmp/author/gru4rec_pytorch.py --dataset=ml-100k \
        --seeds=2020,2021,2022 --output=results/parity-ml-100k.json

Both implementations train on the same training split (RecBole's leave-one-out by time; each user's training
history one session, sessions in order of their first event), for the same number of epochs, in the same
setting, and both are evaluated the same way: each test user's last ``MAX_ITEM_LIST_LENGTH`` items read from a
zero state, every item ranked, the target's rank 1 + the number of items scored higher; NDCG@10 and Recall@20
per user. An item the author's model never saw in training cannot be read or ranked by it (it is skipped in
a history; as a target it ranks last). Per setting, each user's metric is averaged over the seeds and the two
implementations are compared with a paired t-test over users.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_gru4rec import GRU4RecPaper, SessionParallelTrainer, evaluation, pipeline  # noqa: E402
from recbole_gru4rec.session_data import user_sessions  # noqa: E402
from recbole_gru4rec.steps import cpp as cpp_step  # noqa: E402

COMMON_AUTHOR = {"layers": [100], "batch_size": 64, "learning_rate": 0.05, "momentum": 0.0, "dropout_p_embed": 0.0,
                 "dropout_p_hidden": 0.0, "sample_alpha": 0.5, "n_sample": 512, "constrained_embedding": True,
                 "embedding": 0, "bpreg": 1.0, "elu_param": 0.5, "logq": 0.0}
# The same setting in GRU4RecPaper's options. With the shared embedding the author's layer is torch.nn.GRUCell,
# whose candidate is PyTorch's form: gru_cell: pytorch. Sessions enter in time order in both.
COMMON_OURS = {"hidden_size": 100, "train_batch_size": 64, "learning_rate": 0.05, "learner": "adagrad",
               "dropout_prob_input": 0.0, "dropout_prob_hidden": 0.0, "sample_alpha": 0.5, "n_sample": 512,
               "constrained_embedding": True, "embedding_size": 0, "bpreg": 1.0, "logq": 0.0, "gru_cell": "pytorch",
               "final_activation": "auto", "session_order": "time", "session_max_targets": 0}
SETTINGS = {
    "CE (the author's default, 512 negatives)": ({"loss": "cross-entropy"}, {"loss_type": "CE"}),
    "BPR-max (elu 0.5, bpreg 1, 512 negatives)": ({"loss": "bpr-max"}, {"loss_type": "BPR-max"}),
}


def load_author_code(path):
    """The author's module, imported from ``path`` (a file outside this repository)."""
    spec = importlib.util.spec_from_file_location("gru4rec_pytorch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_frame(train_dataset):
    """The training split as the author's code reads it: SessionId, ItemId, Time (a session's first event's
    time, then one unit per position, so sessions keep their order of first events and events their order)."""
    sessions = user_sessions(train_dataset)
    lengths = sessions.lengths
    session_of_event = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(sessions.items)) - np.repeat(sessions.offsets[:-1], lengths)
    times = np.repeat(sessions.first_times, lengths) + position * 1e-3
    return pd.DataFrame({"SessionId": session_of_event, "ItemId": sessions.items, "Time": times})


def ranks_from_scores(scores, targets):
    """1 + the number of items scored strictly higher than each target."""
    return 1 + (scores > scores.gather(1, targets[:, None])).sum(1)


def per_user_metrics(ranks):
    """NDCG@10 and Recall@20 of each user, from the target's rank."""
    ranks = ranks.double()
    return {"ndcg@10": ((ranks <= 10) / torch.log2(ranks + 1)).numpy(), "recall@20": (ranks <= 20).double().numpy()}


def author_ranks(gru, test_rows):
    """Each test user's target rank by the author's trained model, from a zero state over the history."""
    model = gru.model.eval()
    index = pd.Series(np.arange(gru.data_iterator.n_items), index=gru.data_iterator.itemidmap.index.values)
    sequences, lengths = test_rows["item_id_list"].numpy(), test_rows["item_length"].numpy()
    users = len(lengths)
    hidden = [torch.zeros(users, size) for size in gru.layers]
    with torch.no_grad():
        for position in range(int(lengths.max())):
            items = sequences[:, position]
            known = (position < lengths) & index.reindex(items).notna().to_numpy()
            rows = np.nonzero(known)[0]
            if len(rows) == 0:
                continue
            state = [h[rows] for h in hidden]
            model.forward(torch.tensor(index[items[rows]].to_numpy()), state, None, training=False)
            for h, new in zip(hidden, state):
                h[rows] = new
        scores = model.score_items(hidden[-1], model.Wy.weight, model.By.weight)  # every item, as the author scores
    targets = test_rows["item_id"].numpy()
    seen = index.reindex(targets).notna().to_numpy()
    ranks = torch.full((users,), scores.shape[1] + 1, dtype=torch.long)  # an unseen target ranks last
    target_index = torch.tensor(index[targets[seen]].to_numpy())
    ranks[torch.from_numpy(seen)] = ranks_from_scores(scores[torch.from_numpy(seen)], target_index)
    return ranks


def run_author(author, frame, test_rows, setting, seed, epochs):
    """Train the author's GRU4Rec on ``frame``; returns (per-user metrics, training seconds)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    gru = author.GRU4Rec(**{**COMMON_AUTHOR, **setting}, n_epochs=epochs, device=torch.device("cpu"))  # setting wins
    start = time.perf_counter()
    gru.fit(frame)
    seconds = time.perf_counter() - start
    return per_user_metrics(author_ranks(gru, test_rows)), seconds


def run_ours(dataset, setting, seed, epochs, overrides):
    """Train GRU4RecPaper for ``epochs`` epochs (no early stopping); returns (per-user metrics, training seconds)."""
    config = pipeline.build_config("GRU4RecPaper", dataset, overrides={**overrides, **COMMON_OURS, **setting,
                                                                        "epochs": epochs, "seed": seed,
                                                                        "state": "ERROR", "show_progress": False})
    init_seed(seed, True)
    train, _, test = data_preparation(config, create_dataset(config))
    init_seed(seed, True)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    start = time.perf_counter()
    trainer.fit(train, None, saved=False, verbose=False)
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    rows = test._dataset.inter_feat
    with torch.no_grad():
        scores = model.full_sort_predict(rows)
    scores[:, 0] = -math.inf  # padding
    return per_user_metrics(ranks_from_scores(scores, rows["item_id"])), seconds


def compare(ours, authors):
    """Paired t-test over users of seed-averaged per-user metrics: difference of means, its standard error, p."""
    out = {}
    for metric in ("ndcg@10", "recall@20"):
        a = np.mean([run[metric] for run in ours], axis=0)
        b = np.mean([run[metric] for run in authors], axis=0)
        out[metric] = dict(evaluation.paired_test(a, b), ours=float(a.mean()), author=float(b.mean()))
    return out


def main():
    """Train both implementations per setting and seed, then write the paired comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--author_code", required=True, help="path to the author's gru4rec_pytorch.py")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", default=None, help="comma-separated parts of setting names to run")
    parser.add_argument("--n_sample", type=int, default=COMMON_AUTHOR["n_sample"],
                        help="extra negatives of both (512; the author's code's own default is 2048)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    if not os.path.isfile(args.author_code):
        raise SystemExit(f"parity.py: --author_code={args.author_code}: no such file")
    author = load_author_code(args.author_code)
    if shutil.which(os.environ.get("CXX", "g++")):
        cpp_step.load_extension()  # built (or loaded) before any run is timed
    overrides = {"data_path": args.data_path} if args.data_path else {}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    config = pipeline.build_config("GRU4RecPaper", args.dataset, overrides={**overrides, "state": "ERROR"})
    train, _, test = data_preparation(config, create_dataset(config))
    frame, test_rows = training_frame(train._dataset), test._dataset.inter_feat
    report = {"command": " ".join(["python", *sys.argv]), "dataset": args.dataset, "epochs": args.epochs,
              "seeds": seeds, "torch_threads": torch.get_num_threads(), "train_events_per_epoch": len(frame),
              "settings": {}}
    for name, (author_setting, our_setting) in SETTINGS.items():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        # --n_sample for both, unless the setting names its own
        author_setting, our_setting = {"n_sample": args.n_sample, **author_setting}, {"n_sample": args.n_sample, **our_setting}
        ours, authors, seconds = [], [], {"ours": [], "author": []}
        for seed in seeds:
            metrics, spent = run_ours(args.dataset, our_setting, seed, args.epochs, overrides)
            ours.append(metrics)
            seconds["ours"].append(round(spent, 1))
            metrics, spent = run_author(author, frame, test_rows, author_setting, seed, args.epochs)
            authors.append(metrics)
            seconds["author"].append(round(spent, 1))
            print(f"{name}, seed {seed}: NDCG@10 ours {ours[-1]['ndcg@10'].mean():.4f} author "
                  f"{authors[-1]['ndcg@10'].mean():.4f}; Recall@20 ours {ours[-1]['recall@20'].mean():.4f} author "
                  f"{authors[-1]['recall@20'].mean():.4f}; training s ours {seconds['ours'][-1]} author "
                  f"{seconds['author'][-1]}", flush=True)
        report["settings"][name] = {
            "author": {**COMMON_AUTHOR, **author_setting}, "ours": {**COMMON_OURS, **our_setting},
            "per_seed": {"ours": [{k: float(v.mean()) for k, v in run.items()} for run in ours],
                         "author": [{k: float(v.mean()) for k, v in run.items()} for run in authors]},
            "train_seconds": seconds, "comparison": compare(ours, authors),
        }
        with open(args.output, "w", encoding="utf-8") as f:  # after every setting: a killed run keeps its part
            json.dump(report, f, indent=2)
    print(json.dumps({name: s["comparison"] for name, s in report["settings"].items()}, indent=2))


if __name__ == "__main__":
    main()
