"""The leaderboard's files: ``leaderboard-DATASET.json`` (its rows), a Markdown table and a plot.

Reads and writes rows only: importing it loads no model, trainer or torch code (matplotlib is imported when a
plot is drawn, and is an optional dependency: ``pip install recbole-gru4rec[plot]``; the per-user files are
read when the table is written).
"""

import json
import math
import os
import statistics

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20")
SIGNIFICANCE_LEVEL = 0.05
TIME_COLUMNS = ("train_seconds_per_epoch", "train_seconds_total", "train_events_per_second", "eval_seconds", "peak_rss_mb")


def entry_key(row):
    """The entry a row is a run of."""
    return f"{row['model']}:{row['config_name']}"


def row_seed(row):
    """The seed of a row's run (rows written before seeds were recorded carry it in their config)."""
    return row["seed"] if "seed" in row else row["config"].get("seed")


class Leaderboard:
    """The rows of ``leaderboard-DATASET.json`` (one per run: entry and seed) and the files written from them."""

    def __init__(self, dataset, output_dir):
        self.dataset = dataset
        self.folder = output_dir
        self.json_file = os.path.join(output_dir, f"leaderboard-{dataset}.json")
        self.header, self.rows = None, []
        self.reload()

    def reload(self):
        """Read the rows written so far (by this command or another one writing into the same folder)."""
        if os.path.isfile(self.json_file):
            with open(self.json_file, encoding="utf-8") as f:
                saved = json.load(f)
            self.header, self.rows = saved["header"], saved["rows"]

    def row(self, entry, seed):
        """The finished row of ``entry`` with ``seed``, or None."""
        return next((row for row in self.rows if entry_key(row) == entry.key and row_seed(row) == seed), None)

    def add(self, entry, seed, row, header):
        """Record one finished run (replacing an older one of the same entry and seed) and rewrite every output;
        rows another command wrote meanwhile are kept, and so is the list of the commands that wrote rows."""
        self.reload()
        earlier = commands_of(self.header) if self.header else []
        self.header = dict(header, commands=earlier + [command for command in commands_of(header) if command not in earlier])
        self.rows = [old for old in self.rows if (entry_key(old), row_seed(old)) != (entry.key, seed)] + [row]
        self.write()

    def write(self):
        """Write the .json, .md and .png files."""
        base = os.path.splitext(self.json_file)[0]
        os.makedirs(os.path.dirname(os.path.abspath(self.json_file)), exist_ok=True)
        write_atomic(self.json_file, json.dumps({"header": self.header, "rows": self.rows}, indent=2) + "\n")
        write_atomic(f"{base}.md", markdown(self.header, self.rows, paired_comparisons(self.header, self.rows, self.folder)))
        plot(self.header, self.rows, f"{base}.png")


def commands_of(header):
    """The command lines that wrote a leaderboard's rows, oldest first (files written before the list was kept
    name only their last one)."""
    return header.get("commands") or ([header["command"]] if header.get("command") else [])


def write_atomic(path, content):
    """Write ``content`` (text, as UTF-8, or bytes) to ``path`` through a temporary file and a rename, so that a
    reader never sees part of it."""
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
    os.replace(partial, path)


def grouped(rows):
    """``{entry key: its rows}``, entries in the order of their first row."""
    groups = {}
    for row in rows:
        groups.setdefault(entry_key(row), []).append(row)
    return groups


def mean_and_sd(values):
    """Mean and sample standard deviation (None for a single value)."""
    values = [float(value) for value in values if value is not None]
    if not values:
        return float("nan"), None
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1))


def test_mean(runs, metric):
    """Mean over an entry's runs of one test metric."""
    return mean_and_sd([run["test_result"].get(metric) for run in runs])[0]


def reference_entry(header, groups):
    """The GRU4RecPaper entry with the best mean validation score: what every row is tested against."""
    metric = str(header["protocol"].get("valid_metric", "NDCG@10")).lower()
    sign = 1 if header["protocol"].get("valid_metric_bigger", True) else -1
    candidates = {key: runs for key, runs in groups.items() if runs[0]["model"] == "GRU4RecPaper"}
    if not candidates:
        return None
    return max(candidates, key=lambda key: sign * mean_and_sd([run["best_valid_result"].get(metric) for run in candidates[key]])[0])


def per_user_metrics(runs, folder):
    """Each run's per-user test metrics, ``(users, {metric: values})``, or None if a run lacks its file."""
    from recbole_gru4rec import evaluation  # numpy and RecBole's evaluator: only when per-user files are read

    paths = [os.path.join(folder, run["per_user_file"]) for run in runs if run.get("per_user_file")]
    if len(paths) != len(runs) or not all(map(os.path.isfile, paths)):
        return None
    return [evaluation.load(path) for path in paths]


def paired_comparisons(header, rows, folder):
    """Each entry against the reference entry, per metric: a paired t-test over users of each user's metric
    averaged over the entry's seeds. ``{"reference": key, "tests": {key: {metric: test}}}``; an entry with a
    run lacking its per-user file gets no test."""
    groups = grouped(rows)
    reference = reference_entry(header, groups) if header else None
    comparisons = {"reference": reference, "tests": {}}
    if reference is None:
        return comparisons

    from recbole_gru4rec import evaluation  # numpy, scipy and RecBole's evaluator: only when a table is written

    reference_runs = per_user_metrics(groups[reference], folder)
    if reference_runs is None:
        return comparisons
    for key, runs in groups.items():
        loaded = per_user_metrics(runs, folder) if key != reference else None
        if loaded is None:
            continue
        tests = {}
        for metric in TABLE_METRICS:
            users, values = evaluation.seed_mean(loaded, metric)
            reference_users, reference_values = evaluation.seed_mean(reference_runs, metric)
            if users != reference_users:
                raise ValueError(f"{key} and {reference} were tested on different users")
            tests[metric] = evaluation.paired_test(values, reference_values)
        comparisons["tests"][key] = tests
    return comparisons


def _label(runs):
    row = runs[0]
    name = row["model"] if row["config_name"] == "default" else f"{row['model']} ({row['config_name']})"
    return name + (" [time budget]" if any(run["stopped_by"] == "time_budget" for run in runs) else "")


def _metric_cell(runs, metric, test):
    mean, sd = mean_and_sd([run["test_result"].get(metric) for run in runs])
    cell = f"{mean:.4f}" + ("" if sd is None else f" ± {sd:.4f}")
    if test is not None and test["p_value"] < SIGNIFICANCE_LEVEL:
        cell += " ▲" if test["difference"] > 0 else " ▼"
    return cell


def markdown(header, rows, comparisons=None):
    """The leaderboard as Markdown: one line per entry (mean ± sd over its seeds), best mean test NDCG@10 first,
    marks from ``comparisons`` (:func:`paired_comparisons`), and a table of the paired differences."""
    comparisons = comparisons or {"reference": None, "tests": {}}
    groups = grouped(rows)
    ranked = sorted(groups, key=lambda key: -test_mean(groups[key], "ndcg@10"))
    reference, tests = comparisons["reference"], comparisons["tests"]
    users = next((test["users"] for entry_tests in tests.values() for test in entry_tests.values()), None)
    lines = [
        f"# Leaderboard: {header['dataset']}",
        "",
        ("Commands (each wrote some of the rows): " if len(commands_of(header)) > 1 else "Command: ")
        + "; ".join(f"`{command}`" for command in commands_of(header)) + "  ",
        f"Machine: {header['machine']['cpu']} ({header['machine']['cpu_cores']} cores), GPU: {header['machine']['gpu'] or 'none'}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()) + "  ",
        f"Protocol: {json.dumps(header['protocol'], sort_keys=True)}  ",
        "Test metrics of the best-validation epoch: mean ± standard deviation over the entry's seeds (no ± with one",
        "seed). Time columns: means over the seeds; † marks an entry with a run whose cores were shared with other",
        "work, or that was a Ray task given fewer than its machine's cores (its times are too high). Budget: the",
        "time budget of the runs in minutes; none: trained until early stopping or the last epoch.",
    ]
    if reference is not None and tests:
        lines += [
            f"Paired test against **{_label(groups[reference])}** (the GRU4RecPaper entry with the best mean validation",
            f"score): each user's metric is averaged over the entry's seeds, then a paired t-test over the {users} test",
            f"users; ▲ / ▼: significantly higher / lower than it (p < {SIGNIFICANCE_LEVEL}). Entries without ▲▼ in a",
            "column are not significantly different from it there (or, as listed below, were not tested).",
        ]
    lines += [
        "",
        "| model | seeds | " + " | ".join(TABLE_METRICS) + " | epochs | stopped by | budget | s/epoch (median) | train s | events/s | eval s | peak MiB |",
        "|---|---|" + "---:|" * len(TABLE_METRICS) + "---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ranked:
        runs = groups[key]
        metrics = " | ".join(_metric_cell(runs, name, tests.get(key, {}).get(name)) for name in TABLE_METRICS)
        times = {column: mean_and_sd([run[column] for run in runs])[0] for column in TIME_COLUMNS}
        shared = " †" if any(run.get("shared_cores") for run in runs) else ""
        seeds = ", ".join(str(row_seed(run)) for run in runs)
        budget = sorted({str(run.get("time_budget_min") or "none") for run in runs})
        lines.append(
            f"| {_label(runs)}{' (reference)' if key == reference else ''} | {seeds} | {metrics} | "
            f"{statistics.fmean(run['epochs'] for run in runs):.0f} | {', '.join(sorted({run['stopped_by'] for run in runs}))} | "
            f"{', '.join(budget)} | {times['train_seconds_per_epoch']:.2f}{shared} | {times['train_seconds_total']:.0f}{shared} | "
            f"{times['train_events_per_second']:.0f}{shared} | {times['eval_seconds']:.1f} | {times['peak_rss_mb']:.0f} |"
        )
    if reference is not None and tests:
        lines += ["", f"Paired differences to {_label(groups[reference])} (entry − reference, ± standard error, p):", "",
                  "| model | " + " | ".join(TABLE_METRICS) + " |", "|---|" + "---:|" * len(TABLE_METRICS)]
        for key in ranked:
            if key in tests:
                cells = " | ".join(f"{t['difference']:+.4f} ± {t['standard_error']:.4f} (p {t['p_value']:.2g})"
                                   for t in (tests[key][name] for name in TABLE_METRICS))
                lines.append(f"| {_label(groups[key])} | {cells} |")
        untested = [_label(groups[key]) for key in ranked if key != reference and key not in tests]
        if untested:
            lines += ["", "Not tested (a run without its per-user metrics file): " + ", ".join(untested) + "."]
    return "\n".join(lines) + "\n"


def plot(header, rows, path):
    """Draw :func:`accuracy_against_time` into ``path``; without matplotlib installed, no plot is drawn and a line
    says why, at each write of the leaderboard."""
    try:
        import matplotlib
    except ImportError:
        print(f"leaderboard: {path} not drawn: matplotlib is not installed (pip install 'recbole-gru4rec[plot]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = accuracy_against_time(header, rows)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def accuracy_against_time(header, rows):
    """A figure of mean test NDCG@10 against mean total training time: one marker per entry with the seeds'
    standard deviation as an error bar, named in a legend ordered by that NDCG@10 (labels beside the points would
    overlap where entries lie close); entries stopped by a time budget drawn hollow."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    groups = sorted(grouped(rows).values(), key=lambda runs: -(test_mean(runs, "ndcg@10") or 0.0))
    for index, runs in enumerate(groups):
        seconds = max(mean_and_sd([run["train_seconds_total"] for run in runs])[0], 1e-3)
        mean, spread = mean_and_sd([run["test_result"].get("ndcg@10") for run in runs])
        color, marker = f"C{index % 10}", "osD^vP"[index // 10 % 6]
        budgeted = any(run["stopped_by"] == "time_budget" for run in runs)
        axes.errorbar([seconds], [mean], yerr=None if spread is None else [spread], fmt=marker, markersize=7,
                      capsize=3, color=color, markerfacecolor="none" if budgeted else color, label=_label(runs))
    axes.set_xscale("log")
    axes.margins(x=0.08, y=0.12)
    axes.set_xlabel("total training time (s, log scale; mean over seeds)")
    axes.set_ylabel("test NDCG@10 (mean ± sd over seeds)")
    axes.set_title(f"{header['dataset']}: accuracy against training time ({header['machine']['cpu_cores']} CPU cores"
                   + (f", {header['machine']['gpu']}" if header["machine"]["gpu"] else "") + ")", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # saved with bbox "tight"
    return figure
