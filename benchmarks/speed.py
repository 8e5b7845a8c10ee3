"""Training speed of GRU4RecPaper against RecBole's GRU4Rec, measured in one run on one machine.

Each model trains in its own process through run.py (so peak memory is its own), one after another,
never in parallel. Reported for each setting: median seconds per training epoch, training events per
second and microseconds per event, test evaluation time and users evaluated per second, peak resident
memory, the share of CPU time the hypervisor took (steal, on Linux), and the ratio RecBole GRU4Rec epoch / this
epoch, against RecBole's defaults and, when it runs, against RecBole's GRU4Rec with hidden 100 and batch 64. With --fractions, the same is measured on the first 25 %, 50 %, ... of the dataset's users (all their
events), to see how epoch time grows with data. With --rounds=N every setting and RecBole's GRU4Rec run N times,
alternating, and each ratio is taken within its round: a VM whose speed drifts over minutes then shows the spread
of the ratio instead of one draw of it.

    python benchmarks/speed.py --dataset=ml-100k
    python benchmarks/speed.py --dataset=ml-1m-u2999 --fractions=0.25,0.5,1 --epochs=2 --with_autograd=no
    python benchmarks/speed.py --dataset=ml-1m-u2999 --fractions=0.25,0.5,1 --epochs=3 --only="C++ step"
    python benchmarks/speed.py --dataset=ml-100k --epochs=5 --gru4rec_epochs=3 --only="C++ step,hidden 100" --rounds=3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gru4rec import pipeline  # noqa: E402
from recbole_gru4rec.steps import cpp as cpp_step  # noqa: E402
from recbole_gru4rec.leaderboard.runner import machine, versions  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "RecBole GRU4Rec (defaults)"
# RecBole's GRU4Rec with the sizes the issue names for the CE + 512 setting (hidden 100, one layer, batch 64; its
# loss is already CE, over all items). It runs only when no --only is given or --only names it ("hidden 100").
MATCHED = "RecBole GRU4Rec (hidden 100, batch 64)"
# The ratio each row records against each baseline: that baseline's epoch / this epoch, in the same round.
RATIO_KEYS = {BASELINE: "recbole_gru4rec_epoch_over_this", MATCHED: "matched_recbole_gru4rec_epoch_over_this"}
# name -> run.py arguments; "paper" is GRU4RecPaper.yaml's setting, "CE + 512" the 40x setting. Each
# GRU4RecPaper setting runs with the fused training step in Python (--cpp_step=False), with it compiled
# (--compile_step=True; its first epoch includes compiling, the median leaves it out), in C++ (--cpp_step=True,
# what the default cpp_step: auto picks here; built before the run, see main) and with autograd (--fused_step=False).
PAPER = ["--model=GRU4RecPaper", "--cpp_step=False"]
CE_512 = ["--model=GRU4RecPaper", "--cpp_step=False", "--loss_type=CE", "--final_activation=linear",
          "--train_batch_size=64", "--n_sample=512"]
SETTINGS = {
    "GRU4RecPaper (paper: TOP1, batch 50)": PAPER,
    "GRU4RecPaper (paper: TOP1, batch 50), compiled step": PAPER + ["--compile_step=True"],
    "GRU4RecPaper (paper: TOP1, batch 50), C++ step": PAPER + ["--cpp_step=True"],
    "GRU4RecPaper (paper: TOP1, batch 50), autograd step": PAPER + ["--fused_step=False"],
    "GRU4RecPaper (CE, batch 64, 512 extra negatives)": CE_512,
    "GRU4RecPaper (CE, batch 64, 512 extra negatives), compiled step": CE_512 + ["--compile_step=True"],
    "GRU4RecPaper (CE, batch 64, 512 extra negatives), C++ step": CE_512 + ["--cpp_step=True"],
    "GRU4RecPaper (CE, batch 64, 512 extra negatives), autograd step": CE_512 + ["--fused_step=False"],
    MATCHED: ["--model=GRU4Rec", "--hidden_size=100", "--train_batch_size=64"],
    BASELINE: ["--model=GRU4Rec"],
}


def user_subset(dataset, data_path, fraction, folder):
    """Write the first ``fraction`` of the dataset's users (by first appearance) as dataset ``NAME-PCTpct``."""
    source = os.path.join(data_path, dataset, f"{dataset}.inter")
    name = f"{dataset}-{round(fraction * 100)}pct"
    with open(source, encoding="utf-8") as f:
        header, lines = f.readline(), f.readlines()
    users = list(dict.fromkeys(line.split("\t", 1)[0] for line in lines))
    kept = set(users[: max(1, round(fraction * len(users)))])
    os.makedirs(os.path.join(folder, name))
    with open(os.path.join(folder, name, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write(header)
        f.writelines(line for line in lines if line.split("\t", 1)[0] in kept)
    return name, len(kept)


def cpu_times():
    """(steal, total) CPU ticks of the whole machine so far, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(value) for value in f.readline().split()[1:]]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user and nice]
    return ticks[7], sum(ticks[:8])


def run_model(name, args, dataset, data_path, epochs, workdir):
    """Train one model for ``epochs`` epochs in its own run.py process; returns its timings and memory."""
    result_file = os.path.join(workdir, "result.json")
    command = [sys.executable, "run.py", f"--dataset={dataset}", f"--epochs={epochs}", "--saved=False",
               f"--result_file={result_file}", *args] + ([f"--data_path={data_path}"] if data_path else [])
    print("running:", " ".join(command[1:]), flush=True)
    before = cpu_times()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = cpu_times()
    with open(result_file, encoding="utf-8") as f:
        result = json.load(f)
    seconds = sorted(result["train_seconds_per_epoch"])
    median = seconds[len(seconds) // 2]
    return {
        "setting": name,
        "epochs": result["epochs"],
        "train_seconds_per_epoch": result["train_seconds_per_epoch"],
        "median_epoch_seconds": median,
        "train_events_per_epoch": result["train_events_per_epoch"],
        "train_events_per_second": result["train_events_per_second"],
        "microseconds_per_event": round(1e6 * median / result["train_events_per_epoch"], 2),
        "test_eval_seconds": result["test_seconds"],
        "test_users": result["test_users"],
        "eval_users_per_second": round(result["test_users"] / result["test_seconds"], 1),
        "peak_rss_mb": result["peak_rss_mb"],
        "cpu_steal_percent": round(100 * (after[0] - before[0]) / max(after[1] - before[1], 1), 2) if before else None,
    }


def measure(dataset, data_path, epochs, gru4rec_epochs, workdir, with_autograd, only, rounds):
    """Rows of every chosen setting and RecBole's GRU4Rec (last in each round), ``rounds`` times over; each row's
    ratios are against the baselines of its own round."""
    chosen = [name for name, model_args in SETTINGS.items()
              if (with_autograd or "--fused_step=False" not in model_args)
              and (not only or name == BASELINE or any(part in name for part in only))]
    rows = []
    for round_number in range(1, rounds + 1):
        round_rows = {name: run_model(name, SETTINGS[name], dataset, data_path,
                                      gru4rec_epochs if name in RATIO_KEYS else epochs, workdir) for name in chosen}
        for row in round_rows.values():
            row["round"] = round_number
            for baseline, key in RATIO_KEYS.items():
                if baseline in round_rows:
                    row[key] = round(round_rows[baseline]["median_epoch_seconds"] / row["median_epoch_seconds"], 1)
        rows += round_rows.values()
    return rows


def ratio_summary(rows):
    """Per setting and ratio key: the ratio of each round, their median and their minimum."""
    ratios = {}
    for row in rows:
        for key in RATIO_KEYS.values():
            if key in row:
                ratios.setdefault(row["setting"], {}).setdefault(key, []).append(row[key])
    return {name: {key: {"ratios": values, "median": round(statistics.median(values), 1), "min": min(values)}
                   for key, values in by_key.items()}
            for name, by_key in ratios.items()}


def main():
    """Train each model in its own run.py process and write the speed JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None, help="folder holding DATASET/DATASET.inter (default: as run.py)")
    parser.add_argument("--fractions", default=None, help="comma-separated fractions of the users, e.g. 0.25,0.5,1")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each GRU4RecPaper setting (median taken)")
    parser.add_argument("--gru4rec_epochs", type=int, default=1, help="epochs of RecBole's GRU4Rec")
    parser.add_argument("--with_autograd", choices=("yes", "no"), default="yes",
                        help="also time each GRU4RecPaper setting with autograd instead of the fused step")
    parser.add_argument("--only", default=None,
                        help="comma-separated parts of setting names to run, none holding a comma (RecBole's GRU4Rec with its "
                             "defaults always runs), e.g. 'C++ step,hidden 100'")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every setting and RecBole's GRU4Rec this many times, alternating (ratios per round)")
    parser.add_argument("--output", default=None, help="JSON file for the results (default results/speed-DATASET.json)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds}: needs an integer >= 1")
    with_autograd = args.with_autograd == "yes"
    only = args.only.split(",") if args.only else None
    cpp_step.load_extension()  # built once here (or found in torch's cache), so no timed epoch includes the build
    report = {"dataset": args.dataset, "machine": machine(), "versions": versions(), "rounds": args.rounds, "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        if args.fractions is None:
            report["runs"].append({"fraction": 1.0, "dataset": args.dataset,
                                   "rows": measure(args.dataset, args.data_path, args.epochs, args.gru4rec_epochs, workdir,
                                                   with_autograd, only, args.rounds)})
        else:
            # RecBole appends DATASET/ to data_path; --data_path is the folder above, as for run.py
            data_path = args.data_path or os.path.dirname(
                os.path.normpath(pipeline.build_config("GRU4RecPaper", args.dataset)["data_path"]))
            for fraction in (float(text) for text in args.fractions.split(",")):
                name, n_users = user_subset(args.dataset, data_path, fraction, os.path.join(workdir, "data"))
                rows = measure(name, os.path.join(workdir, "data"), args.epochs, args.gru4rec_epochs, workdir, with_autograd,
                               only, args.rounds)
                report["runs"].append({"fraction": fraction, "dataset": name, "users": n_users, "rows": rows})
    for run in report["runs"]:
        run["ratio_by_setting"] = ratio_summary(run["rows"])
    output = args.output or os.path.join(REPO, "results", f"speed-{args.dataset}.json")
    with open(output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    cpu = report["machine"]
    print(f"\n{args.dataset} on {cpu['cpu']} ({cpu['cpu_cores']} cores), torch {report['versions']['torch']}")
    print(f"{'users':>6} {'round':>5} {'setting':<66} {'s/epoch':>8} {'events/s':>9} {'us/event':>9} {'x faster':>8} "
          f"{'x matched':>9} {'eval users/s':>12} {'RSS MB':>7} {'steal %':>7}")
    for run in report["runs"]:
        for row in run["rows"]:
            print(f"{round(100 * run['fraction']):>5}% {row['round']:>5} {row['setting']:<66} {row['median_epoch_seconds']:8.2f} "
                  f"{row['train_events_per_second']:9.0f} {row['microseconds_per_event']:9.1f} "
                  f"{row['recbole_gru4rec_epoch_over_this']:8.1f} {row.get(RATIO_KEYS[MATCHED], '-'):>9} "
                  f"{row['eval_users_per_second']:12.0f} {row['peak_rss_mb']:7.0f} "
                  f"{row['cpu_steal_percent'] if row['cpu_steal_percent'] is not None else '-':>7}")
        for name, by_key in run["ratio_by_setting"].items():
            for key, summary in by_key.items():
                if name not in RATIO_KEYS and args.rounds > 1:
                    print(f"{round(100 * run['fraction']):>5}% {key} over {args.rounds} rounds, {name}: median "
                          f"{summary['median']}, min {summary['min']} ({', '.join(map(str, summary['ratios']))})")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
