"""Test users evaluated per second: GRU4RecPaper (default options, or those given) against RecBole's GRU4Rec (its
defaults), both untrained, in one process, taking turns round after round, so that both see the same phase of
this VM (its speed drifts by up to 2x over minutes, and one evaluation of ml-100k's test set takes ~0.1 s).

    python benchmarks/eval_speed.py --dataset=ml-100k --rounds=7
    python benchmarks/eval_speed.py --dataset=ml-100k --rounds=7 --constrained_embedding=True --train_batch_size=64

Each round evaluates the whole test set once with each model (RecBole's ``Trainer.evaluate``: the protocol's
full ranking and metrics, each model on its own data loader of the same split). With an embedding, GRU4RecPaper is
also timed with its input gates taken per event ("gates per event"), as before the catalog's gates were taken in
one product (``GRU4RecPaper._input_gate_table``). Prints each round's seconds and, per model, the median test
users per second and its ratio to RecBole's GRU4Rec's.
"""

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole.data import data_preparation  # noqa: E402

from recbole_gru4rec import pipeline, registry  # noqa: E402
from recbole_gru4rec.cli import split_flags  # noqa: E402


def evaluator(model_name, dataset, overrides):
    """A function that evaluates an untrained ``model_name`` on the test set once, and the number of test users."""
    config = pipeline.build_config(model_name, dataset, overrides={"state": "ERROR", "show_progress": False,
                                                                   **overrides})
    train, _, test = data_preparation(config, pipeline.load_dataset(config))
    model = registry.get_model(model_name)(config, train._dataset).to(config["device"])
    trainer = pipeline.trainer_class(config)(config, model)
    # One test row per user (the sequential protocol).
    return model, lambda: trainer.evaluate(test, load_best_model=False, show_progress=False), len(test.dataset)


def main():
    """Evaluate both models in turns for the rounds asked, then print each round and the medians."""
    flags, options = split_flags(sys.argv[1:], {"dataset": "ml-100k", "rounds": "7"})
    dataset, rounds = flags["dataset"], int(flags["rounds"])
    ours, evaluate_ours, users = evaluator("GRU4RecPaper", dataset, options)
    _, evaluate_gru4rec, gru4rec_users = evaluator("GRU4Rec", dataset, {})
    assert users == gru4rec_users, (users, gru4rec_users)
    runs = {"GRU4RecPaper": evaluate_ours, "RecBole GRU4Rec": evaluate_gru4rec}
    if ours.item_embedding is not None:
        def per_event():
            ours._input_gate_table = lambda events: None  # the instance's, for this call only
            try:
                return evaluate_ours()
            finally:
                del ours._input_gate_table
        runs["GRU4RecPaper, gates per event"] = per_event
    seconds = {name: [] for name in runs}
    print(f"{dataset}: {users} test users, options {options}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for run in runs.values():  # warm-up
        run()
    for round_ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {seconds[name][-1]:.3f} s" for name in runs))
    reference = users / statistics.median(seconds["RecBole GRU4Rec"])
    for name in runs:
        per_second = users / statistics.median(seconds[name])
        print(f"{name}: {per_second:,.0f} test users/s (median of {rounds}), {per_second / reference:.2f}x RecBole's GRU4Rec")


if __name__ == "__main__":
    main()
