"""GPU check: GRU4RecPaper trains the same on GPU as on CPU, with each training step, and how fast each trains.

Runs on a machine with CUDA. The comparison runs share one seed, the data and the issue's speed setting
(cross-entropy, batch 64, 512 extra negatives) without dropout, whose masks come from each device's own generator;
the extra negatives come from a CPU generator on both devices. Each run is compared with the CPU run of the fused
step. The speed runs then time the paper's setting on the GPU and RecBole's GRU4Rec beside it. The JSON file is
rewritten after every run, so a run cut short keeps what finished; a run that fails records its error.

    python benchmarks/gpu_check.py --output=gpu_check.json
"""

import argparse
import json
import os
import statistics
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402

SAME_SETTING = {"epochs": 3, "dropout_prob_hidden": 0.0, "loss_type": "CE", "final_activation": "linear",
                "train_batch_size": 64, "n_sample": 512}
REFERENCE = "CE + 512, fused step, cpu"
SAME_RUNS = {
    "CE + 512, fused step, cuda": {"use_gpu": True},
    REFERENCE: {"use_gpu": False},
    "CE + 512, autograd step, cuda": {"use_gpu": True, "fused_step": False},
    "CE + 512, compiled step, cuda": {"use_gpu": True, "compile_step": True},
}
# Three epochs: a compiled run compiles in its first, and the median leaves that epoch out.
SPEED_RUNS = {
    "GRU4RecPaper paper (TOP1, batch 50), fused step, cuda": ("GRU4RecPaper", {"epochs": 3}),
    "GRU4RecPaper paper (TOP1, batch 50), compiled step, cuda": ("GRU4RecPaper", {"epochs": 3, "compile_step": True}),
    "RecBole GRU4Rec (defaults), cuda": ("GRU4Rec", {"epochs": 3}),
}


def summary(result):
    """The parts of a run's result record that the check compares and times."""
    keys = ("test_result", "train_loss_per_epoch", "train_seconds_per_epoch", "train_events_per_second", "test_seconds")
    record = {key: result[key] for key in keys}
    record["median_train_seconds_per_epoch"] = statistics.median(result["train_seconds_per_epoch"])
    return record


def differences(run, reference):
    """Largest relative difference of the epoch losses and largest absolute difference of the test metrics."""
    return {
        "max_relative_loss_difference": max(
            abs(a - b) / abs(b) for a, b in zip(run["train_loss_per_epoch"], reference["train_loss_per_epoch"])),
        "max_abs_test_metric_difference": max(
            abs(run["test_result"][k] - reference["test_result"][k]) for k in reference["test_result"]),
    }


def timed_run(report, name, model, overrides, output):
    """Run one training, store its summary (or its error) under ``name`` and rewrite the report file."""
    try:
        result = pipeline.run(model, "ml-100k", overrides={**overrides, "state": "WARNING"}, saved=False)
        report[name] = summary(result)
    except Exception as error:  # noqa: BLE001 -- recorded, and the other runs still go ahead
        report[name] = {"error": "".join(traceback.format_exception_only(error)).strip()}
        traceback.print_exc()
    print(name, json.dumps(report[name]), flush=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


def main():
    """Train on CPU and on GPU with each step, compare the parameters, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "same_setting": SAME_SETTING}
    for name, overrides in SAME_RUNS.items():
        timed_run(report, name, "GRU4RecPaper", {**SAME_SETTING, **overrides}, args.output)
    for name, (model, overrides) in SPEED_RUNS.items():
        timed_run(report, name, model, {**overrides, "use_gpu": True}, args.output)
    reference = report[REFERENCE]
    report["compared with the cpu run"] = {
        name: differences(report[name], reference) for name in SAME_RUNS
        if name != REFERENCE and "error" not in report[name] and "error" not in reference}
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report["compared with the cpu run"], indent=2))


if __name__ == "__main__":
    main()
