"""The command line of run.py: RecBole's habits (``--key=value`` for any config key) plus a few of our own."""

import json
import os
import sys

from recbole_gru4rec import pipeline
from recbole_gru4rec.compat import CompatibilityError
from recbole_gru4rec.errors import UsageError

USAGE = """usage: python run.py [--model=GRU4RecPaper] [--dataset=ml-100k] [--config_files=a.yaml,b.yaml]
                     [--data_path=DIR] [--result_file=PATH] [--KEY=VALUE ...]

Trains MODEL (GRU4RecPaper or any RecBole model) on DATASET with early stopping on the validation metric,
evaluates it on test and prints the results. Any RecBole config key can be set with --KEY=VALUE."""

# Our own flags; every other --KEY=VALUE is a RecBole config override.
OWN_FLAGS = ("model", "dataset", "config_files", "result_file")


def parse_args(argv):
    """Split ``--key=value`` arguments into our flags and RecBole config overrides (values stay strings)."""
    flags, overrides = {"model": "GRU4RecPaper", "dataset": "ml-100k", "config_files": "", "result_file": None}, {}
    for arg in argv:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise UsageError(f"argument {arg!r} is not of the form --KEY=VALUE (see python run.py --help)")
        (flags if key in OWN_FLAGS else overrides)[key] = value
    flags["config_files"] = [path for path in flags["config_files"].split(",") if path]
    return flags, overrides


def format_results(result):
    """A plain-text table of validation and test metrics."""
    names = list(result["test_result"])
    width = max(len(name) for name in names + ["metric"])
    lines = [f"{'metric':<{width}}  {'valid':>8}  {'test':>8}"]
    for name in names:
        valid = result["best_valid_result"].get(name, float("nan"))
        lines.append(f"{name:<{width}}  {valid:8.4f}  {result['test_result'][name]:8.4f}")
    return "\n".join(lines)


def write_json(path, record):
    """Write ``record`` as JSON atomically: a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def main(argv):
    """Run the command line; returns the process exit code."""
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    try:
        flags, overrides = parse_args(argv)
        if flags["result_file"] is not None and not os.path.isdir(os.path.dirname(os.path.abspath(flags["result_file"]))):
            raise UsageError(f"--result_file={flags['result_file']}: its folder does not exist")
        result = pipeline.run(flags["model"], flags["dataset"], flags["config_files"], overrides)
    except (UsageError, CompatibilityError) as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    print(f"\n{result['model']} on {result['dataset']}: {result['epochs']} epochs ({result['stopped_by']}), "
          f"{result['train_events_per_second']:.0f} training events/s")
    print(format_results(result))
    if flags["result_file"]:
        write_json(flags["result_file"], result)
        print(f"results written to {flags['result_file']}")
    return 0
