"""The leaderboard's files: ``leaderboard-DATASET.json`` (its rows), a Markdown table and a plot.

Reads and writes rows only: importing it loads no model, trainer or torch code (matplotlib is imported when a
plot is drawn, and is an optional dependency: ``pip install recbole-gru4rec[plot]``).
"""

import json
import math
import os

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20")


class Leaderboard:
    """The rows of ``leaderboard-DATASET.json`` and the files written from them."""

    def __init__(self, dataset, output_dir):
        self.dataset = dataset
        self.json_file = os.path.join(output_dir, f"leaderboard-{dataset}.json")
        self.header, self.rows = None, []
        if os.path.isfile(self.json_file):
            with open(self.json_file, encoding="utf-8") as f:
                saved = json.load(f)
            self.header, self.rows = saved["header"], saved["rows"]

    def row(self, entry):
        """The finished row of ``entry``, or None."""
        return next((row for row in self.rows if f"{row['model']}:{row['config_name']}" == entry.key), None)

    def add(self, entry, row, header):
        """Record one finished row (replacing an older one of the same entry) and rewrite every output."""
        self.header = header
        self.rows = [old for old in self.rows if f"{old['model']}:{old['config_name']}" != entry.key] + [row]
        self.write()

    def write(self):
        """Write the .json, .md and .png files."""
        base = os.path.splitext(self.json_file)[0]
        os.makedirs(os.path.dirname(os.path.abspath(self.json_file)), exist_ok=True)
        write_atomic(self.json_file, json.dumps({"header": self.header, "rows": self.rows}, indent=2) + "\n")
        write_atomic(f"{base}.md", markdown(self.header, self.rows))
        plot(self.header, self.rows, f"{base}.png")


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


def _label(row):
    name = row["model"] if row["config_name"] == "default" else f"{row['model']} ({row['config_name']})"
    return name + (" [time budget]" if row["stopped_by"] == "time_budget" else "")


def markdown(header, rows):
    """The leaderboard as a Markdown table, best test NDCG@10 first, with its header."""
    ranked = sorted(rows, key=lambda row: -row["test_result"].get("ndcg@10", float("-inf")))
    lines = [
        f"# Leaderboard: {header['dataset']}",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']['cpu']} ({header['machine']['cpu_cores']} cores), GPU: {header['machine']['gpu'] or 'none'}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()) + "  ",
        f"Seed {header['protocol'].get('seed')}; protocol: {json.dumps(header['protocol'], sort_keys=True)}  ",
        "Test metrics of the best-validation epoch. Budget: the time budget of the row's run in minutes (rows may",
        "come from several runs of the command); none: trained until early stopping or the last epoch.",
        "",
        "| model | " + " | ".join(TABLE_METRICS) + " | epochs | stopped by | budget | s/epoch (median) | train s | events/s | eval s | peak MiB |",
        "|---|" + "---:|" * len(TABLE_METRICS) + "---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ranked:
        metrics = " | ".join(f"{row['test_result'].get(name, float('nan')):.4f}" for name in TABLE_METRICS)
        lines.append(
            f"| {_label(row)} | {metrics} | {row['epochs']} | {row['stopped_by']} | {row.get('time_budget_min') or 'none'} | "
            f"{row['train_seconds_per_epoch']:.2f} | "
            f"{row['train_seconds_total']:.0f} | {row['train_events_per_second']:.0f} | {row['eval_seconds']:.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def label_offsets(points):
    """Where each point's label goes, in offset points: above right of the point, or below right of it when a
    point above it and near it in time has its label there already (two labels would overlap)."""
    finite = [y for _, y in points if math.isfinite(y)]
    near_in_y = 0.05 * ((max(finite) - min(finite)) if finite else 0.0)
    offsets = [(6, 4)] * len(points)
    placed_above = []
    for index in sorted(range(len(points)), key=lambda i: -points[i][1] if math.isfinite(points[i][1]) else 0.0):
        x, y = points[index]
        if any(abs(math.log10(x / other_x)) < 0.6 and 0 <= other_y - y < near_in_y for other_x, other_y in placed_above):
            offsets[index] = (6, -11)
        else:
            placed_above.append((x, y))
    return offsets


def plot(header, rows, path):
    """Test NDCG@10 against total training time, one point per row; time-budgeted rows drawn hollow.
    Without matplotlib installed, no plot is drawn and the log says so once."""
    try:
        import matplotlib
    except ImportError:
        print(f"leaderboard: {path} not drawn: matplotlib is not installed (pip install 'recbole-gru4rec[plot]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    points = [(max(row["train_seconds_total"], 1e-3), row["test_result"].get("ndcg@10", float("nan"))) for row in rows]
    for row, (x, y), offset in zip(rows, points, label_offsets(points)):
        budgeted = row["stopped_by"] == "time_budget"
        axes.scatter([x], [y], s=60, facecolors="none" if budgeted else "C0", edgecolors="C0")
        axes.annotate(_label(row), (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    axes.set_xscale("log")
    left, right = axes.get_xlim()
    axes.set_xlim(left, right * 6)  # room for the labels of the slowest models
    axes.margins(y=0.12)
    axes.set_xlabel("total training time (s, log scale)")
    axes.set_ylabel("test NDCG@10")
    axes.set_title(f"{header['dataset']}: accuracy against training time ({header['machine']['cpu_cores']} CPU cores"
                   + (f", {header['machine']['gpu']}" if header["machine"]["gpu"] else "") + ")", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
