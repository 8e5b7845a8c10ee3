"""Search GRU4RecPaper's options on the validation metric only (optuna TPE), one trial after another.

Each finished trial is appended as one JSON line to the trials file, so a killed search loses nothing
and a rerun continues from the trials already there. The test split is never looked at here.
The search needs optuna, which the test extra leaves out: ``pip install -e ".[tune]"``.
``--settings=FILE`` evaluates hand-picked settings instead (one JSON object of options per line), in order;
it runs without optuna.

    python benchmarks/tune.py --dataset=ml-100k --trials=8 --epochs=15 --stopping_step=3
    python benchmarks/tune.py --dataset=ml-100k --settings=benchmarks/settings-ml-100k.jsonl --trials_file=...
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402

# The search space: every value is a GRU4RecPaper option (see configs/GRU4RecPaper.yaml).
SPACE = {
    "loss_type": ["BPR-max", "CE", "TOP1-max", "TOP1", "BPR"],
    "final_activation": ["linear", "elu-0.5", "elu-1", "tanh"],
    "n_sample": [0, 128, 512, 2048],
    "sample_alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
    "dropout_prob_hidden": [0.0, 0.1, 0.2, 0.3, 0.5],
    "dropout_prob_input": [0.0, 0.1, 0.2],
    "train_batch_size": [32, 64, 128, 256],
    "momentum": [0.0, 0.3, 0.6, 0.9],
    "constrained_embedding": [False, True],
}
LEARNING_RATE = (0.005, 0.3)


def suggest(trial):
    """One point of the search space."""
    options = {name: trial.suggest_categorical(name, values) for name, values in SPACE.items()}
    options["learning_rate"] = trial.suggest_float("learning_rate", *LEARNING_RATE, log=True)
    options["learner"] = "adagrad_momentum" if options["momentum"] > 0 else "adagrad"
    if options["loss_type"] != "CE":
        options["momentum"], options["learner"] = 0.0, "adagrad"
    return options


def main():
    """Run the hand-picked settings or the optuna search (validation metric only), each trial appended to the trials file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--stopping_step", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (not of the training runs)")
    parser.add_argument("--trials_file", default=None, help="default results/tuning-DATASET.jsonl")
    parser.add_argument("--settings", default=None, help="a file of hand-picked settings, one JSON object a line")
    args = parser.parse_args()
    trials_file = args.trials_file or os.path.join("results", f"tuning-{args.dataset}.jsonl")
    if args.settings:
        with open(args.settings, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    options = json.loads(line)
                    record = validation_run(args, options)
                    append(trials_file, record)
                    print(f"valid ndcg@10 {record['valid_ndcg@10']:.4f} {options}", flush=True)
        return
    search(args, trials_file)


def search(args, trials_file):
    """The optuna TPE search, continued from the trials already in the trials file."""
    import optuna  # here, not at the top: hand-picked --settings rounds need no optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    distributions = search_space(optuna)
    done = []
    if os.path.exists(trials_file):
        with open(trials_file, encoding="utf-8") as f:
            done = [json.loads(line) for line in f if line.strip()]
    for record in done:
        study.add_trial(optuna.trial.create_trial(
            params=record["params"], distributions=distributions, value=record["valid_ndcg@10"]))

    def objective(trial):
        options = suggest(trial)
        record = dict(validation_run(args, options), params=trial.params)
        append(trials_file, record)
        print(f"trial {len(done) + trial.number}: valid ndcg@10 {record['valid_ndcg@10']:.4f} {options}", flush=True)
        return record["valid_ndcg@10"]

    study.optimize(objective, n_trials=max(0, args.trials - len(done)))
    best = study.best_trial
    print(f"best valid ndcg@10 {best.value:.4f} with {best.params}")


def validation_run(args, options):
    """Train GRU4RecPaper with ``options`` and return its validation record (the test split stays untouched)."""
    overrides = {**options, "epochs": args.epochs, "stopping_step": args.stopping_step, "state": "WARNING"}
    if args.data_path:
        overrides["data_path"] = args.data_path
    result = pipeline.run("GRU4RecPaper", args.dataset, overrides=overrides, saved=False, evaluate_test=False)
    seconds = sorted(result["train_seconds_per_epoch"])
    return {"options": options, "valid_ndcg@10": result["best_valid_result"]["ndcg@10"],
            "best_valid_result": result["best_valid_result"], "epochs": result["epochs"],
            "stopped_by": result["stopped_by"], "median_epoch_seconds": seconds[len(seconds) // 2]}


def append(trials_file, record):
    """Add one finished trial to the trials file."""
    with open(trials_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def search_space(optuna):
    """The search space as optuna distributions, to replay finished trials into a new study."""
    distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in SPACE.items()}
    distributions["learning_rate"] = optuna.distributions.FloatDistribution(*LEARNING_RATE, log=True)
    return distributions


if __name__ == "__main__":
    main()
