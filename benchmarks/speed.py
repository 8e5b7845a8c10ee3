"""Training speed of GRU4RecPaper against RecBole's GRU4Rec, measured in one run on one machine.

Each model trains in its own process through run.py (so peak memory is its own), one after another,
never in parallel. Reported: median seconds per training epoch, training events per second, evaluation
time on the test split, peak resident memory, and the ratio RecBole GRU4Rec epoch / GRU4RecPaper epoch.

    python benchmarks/speed.py --dataset=ml-100k
    python benchmarks/speed.py --dataset=ml-1m-u2999 --gru4rec_epochs=1
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> run.py arguments; "paper" is GRU4RecPaper.yaml unchanged.
SETTINGS = {
    "GRU4RecPaper (paper: TOP1, batch 50)": ["--model=GRU4RecPaper"],
    "GRU4RecPaper (CE, batch 64, 512 extra negatives)": [
        "--model=GRU4RecPaper", "--loss_type=CE", "--final_activation=linear", "--train_batch_size=64", "--n_sample=512",
    ],
    "RecBole GRU4Rec (defaults)": ["--model=GRU4Rec"],
}


def cpu_name():
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_model(name, args, dataset, extra, epochs, workdir):
    result_file = os.path.join(workdir, "result.json")
    command = [sys.executable, "run.py", f"--dataset={dataset}", f"--epochs={epochs}", "--saved=False",
               f"--result_file={result_file}", *args, *extra]
    print("running:", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(result_file, encoding="utf-8") as f:
        result = json.load(f)
    epochs_seconds = sorted(result["train_seconds_per_epoch"])
    return {
        "setting": name,
        "epochs": result["epochs"],
        "train_seconds_per_epoch": result["train_seconds_per_epoch"],
        "median_epoch_seconds": epochs_seconds[len(epochs_seconds) // 2],
        "train_events_per_second": result["train_events_per_second"],
        "test_eval_seconds": result["test_seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each GRU4RecPaper setting (median taken)")
    parser.add_argument("--gru4rec_epochs", type=int, default=1, help="epochs of RecBole's GRU4Rec")
    parser.add_argument("--output", default=None, help="JSON file for the results (default results/speed-DATASET.json)")
    args = parser.parse_args()
    extra = [f"--data_path={args.data_path}"] if args.data_path else []
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, model_args in SETTINGS.items():
            epochs = args.gru4rec_epochs if "GRU4Rec " in name else args.epochs
            rows.append(run_model(name, model_args, args.dataset, extra, epochs, workdir))
    baseline = rows[-1]["median_epoch_seconds"]
    for row in rows:
        row["recbole_gru4rec_epoch_over_this"] = round(baseline / row["median_epoch_seconds"], 1)
    report = {
        "dataset": args.dataset,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "rows": rows,
    }
    output = args.output or os.path.join(REPO, "results", f"speed-{args.dataset}.json")
    with open(output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\n{args.dataset} on {report['machine']['cpu']} ({report['machine']['cores']} cores), torch {torch.__version__}")
    print(f"{'setting':<52} {'s/epoch':>8} {'events/s':>9} {'x faster':>8} {'eval s':>7} {'RSS MB':>7}")
    for row in rows:
        print(f"{row['setting']:<52} {row['median_epoch_seconds']:8.2f} {row['train_events_per_second']:9.0f} "
              f"{row['recbole_gru4rec_epoch_over_this']:8.1f} {row['test_eval_seconds']:7.2f} {row['peak_rss_mb']:7.0f}")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
