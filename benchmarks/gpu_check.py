"""GPU check: GRU4RecPaper trains the same on GPU as on CPU, and how fast each device trains.

Runs on a machine with CUDA. Same seed, same data, no dropout (its random masks come from a different
generator on each device); the extra negatives come from a CPU generator on both. Writes one JSON file.

    python benchmarks/gpu_check.py --output=gpu_check.json
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402

SAME_RUN = {"epochs": 3, "dropout_prob_hidden": 0.0, "loss_type": "BPR-max", "final_activation": "elu-0.5",
            "n_sample": 256, "learning_rate": 0.05, "state": "WARNING"}
SPEED_RUNS = {
    "GRU4RecPaper paper": ("GRU4RecPaper", {"epochs": 2}),
    "GRU4RecPaper CE batch 64 + 512 negatives": (
        "GRU4RecPaper", {"epochs": 2, "loss_type": "CE", "final_activation": "linear", "train_batch_size": 64, "n_sample": 512}),
    "RecBole GRU4Rec": ("GRU4Rec", {"epochs": 1}),
}


def summary(result):
    return {key: result[key] for key in ("test_result", "train_loss_per_epoch", "train_seconds_per_epoch",
                                         "train_events_per_second", "test_seconds")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "same_run": SAME_RUN}
    for device, use_gpu in (("cpu", False), ("cuda", True)):
        report[f"same_run_{device}"] = summary(pipeline.run("GRU4RecPaper", "ml-100k", overrides={**SAME_RUN, "use_gpu": use_gpu}, saved=False))
        print(device, report[f"same_run_{device}"], flush=True)
    cpu, gpu = report["same_run_cpu"], report["same_run_cuda"]
    report["max_relative_loss_difference"] = max(
        abs(a - b) / abs(a) for a, b in zip(cpu["train_loss_per_epoch"], gpu["train_loss_per_epoch"]))
    report["max_abs_test_metric_difference"] = max(abs(cpu["test_result"][k] - gpu["test_result"][k]) for k in cpu["test_result"])
    for name, (model, overrides) in SPEED_RUNS.items():
        for device, use_gpu in (("cuda", True),):
            result = pipeline.run(model, "ml-100k", overrides={**overrides, "state": "WARNING", "use_gpu": use_gpu}, saved=False)
            report[f"speed {name} on {device}"] = summary(result)
            print(name, device, result["train_seconds_per_epoch"], flush=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("max_")}))


if __name__ == "__main__":
    main()
