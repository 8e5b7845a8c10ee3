"""The command line of run.py: RecBole's habits (``--key=value`` for any config key) plus a few of our own."""

import argparse
import json
import os
import shlex
import sys

from recbole_gru4rec import pipeline
from recbole_gru4rec.compat import CompatibilityError
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.run_control import NonFiniteLossError, TrainingInterrupted

USAGE = """usage: python run.py [--model=GRU4RecPaper] [--dataset=ml-100k] [--config_files=a.yaml,b.yaml]
                     [--data_path=DIR] [--result_file=PATH] [--time_budget_min=N] [--resume=LAST.pth]
                     [--saved=true] [--per_user_file=PATH.npz] [--KEY=VALUE ...]
       python run.py --leaderboard --dataset=DATASET --models=MODEL[:CONFIG.yaml],... [--config_files=...]
                     [--seeds=S,S,... | --n_seeds=N] [--time_budget_min=N] [--output_dir=results]
                     [--rerun=false] [--shared_cores=false] [--checkpoint_dir=saved/leaderboard]
                     [--ray_address=local|auto|HOST:PORT] [--cpus_per_run=1] [--gpus_per_run=0] [--KEY=VALUE ...]
       python run.py recommend --checkpoint=PATH (--user=ID | --history=ID,ID | --history-titles=T,T |
                     --users-file=FILE) [--topk=10] [--exclude-seen=true|false] [--json]
       python run.py hyper --params_file=FILE [--model=GRU4RecPaper] [--dataset=ml-100k] [--tool=hyperopt|ray]
                     [--algo=exhaustive|random|bayes] [--max_evals=100] [--output_dir=hyper]
                     [--ray_address=local|auto|HOST:PORT] [--cpus_per_trial=1] [--gpus_per_trial=0]
                     [--config_files=...] [--KEY=VALUE ...]

Trains MODEL (GRU4RecPaper or any RecBole model) on DATASET with early stopping on the validation metric,
evaluates it on test and prints the results. Any RecBole config key can be set with --KEY=VALUE.
--time_budget_min stops training after the first epoch that ends past N minutes. Every epoch end writes
saved/MODEL-TIME-last.pth; after a kill or Ctrl-C, the same command plus --resume=that file continues the run.
--saved=false writes no checkpoint (the test metrics are then those of the last epoch, not of the best one).
--per_user_file writes each test user's metrics (compressed numpy arrays), for paired tests between runs.
--leaderboard trains each listed model in turn under the same protocol (CONFIG.yaml: that model's own
hyperparameters), once per seed (--seeds, or --n_seeds from the protocol's seed on), and writes
OUTPUT_DIR/leaderboard-DATASET.json, .md and .png after each run: mean and standard deviation over seeds, and
a paired test over users against the best GRU4RecPaper entry; run again, it skips finished runs and resumes
an unfinished one. --shared_cores=true marks the time columns of its runs as taken while other work ran.
--ray_address runs the (model, seed) runs as Ray tasks of --cpus_per_run / --gpus_per_run each, side by side
on that cluster (local: one started here); a task whose worker dies is retried and resumes from its last
epoch checkpoint, kept under --checkpoint_dir (give a folder every machine of the cluster sees).
`recommend` prints the next movies a trained sequential model predicts (python run.py recommend --help).
`hyper` searches the space of a RecBole params file (one trial = one run as above, chosen on validation) with
RecBole's HyperTuning or with Ray Tune on a Ray cluster; OUTPUT_DIR/trials.jsonl grows as trials finish,
OUTPUT_DIR/best.json holds the best parameters and their test result.
`recbole-gru4rec` (installed with the package) is the same command as `python run.py`."""


def split_flags(argv, defaults, refused=None):
    """``--key=value`` arguments as (our flags, from ``defaults`` and its keys; RecBole overrides), as strings.
    ``refused`` maps a key that must not appear to why (the end of its error line)."""
    flags, overrides = dict(defaults), {}
    for arg in argv:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise UsageError(f"argument {arg!r} is not of the form --KEY=VALUE (see python run.py --help)")
        if refused and key in refused:
            raise UsageError(f"--{key} does not go with --leaderboard ({refused[key]})")
        (flags if key in defaults else overrides)[key] = value
    return flags, overrides


def boolean_flag(name, text):
    """A true/false flag's value (any letter case), or a one-line error naming it."""
    if text.lower() not in ("true", "false"):
        raise UsageError(f"--{name}={text}: use true or false")
    return text.lower() == "true"


def parse_args(argv):
    """Split ``--key=value`` arguments into our flags and RecBole config overrides (values stay strings)."""
    flags, overrides = split_flags(argv, {"model": "GRU4RecPaper", "dataset": "ml-100k", "config_files": "",
                                          "result_file": None, "time_budget_min": None, "resume": None,
                                          "saved": "true", "per_user_file": None})
    flags["config_files"] = [path for path in flags["config_files"].split(",") if path]
    flags["saved"] = boolean_flag("saved", flags["saved"])
    if flags["resume"] is not None and not flags["saved"]:
        raise UsageError("--resume goes with --saved=true: a resumed run keeps writing its checkpoints")
    if flags["time_budget_min"] is not None:
        flags["time_budget_min"] = positive_minutes(flags["time_budget_min"])
    return flags, overrides


def positive_minutes(text):
    """``--time_budget_min`` as a float, or a one-line error."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise UsageError(f"--time_budget_min={text}: give a positive number of minutes")
    return minutes


def resume_command(argv, checkpoint):
    """The command line that continues an interrupted run from ``checkpoint``."""
    kept = [shlex.quote(arg) for arg in argv if not arg.startswith("--resume=")]
    return " ".join(["python run.py", *kept, shlex.quote(f"--resume={checkpoint}")])


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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def recommend_parser():
    """The arguments of ``run.py recommend``."""
    parser = _Parser(prog="python run.py recommend", description="Top-k next movies from a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="a .pth file written by run.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--user", help="a user id of the dataset: recommend after their whole known history")
    source.add_argument("--history", help="comma-separated item ids, oldest first (a new user)")
    source.add_argument("--history-titles", help='comma-separated movie titles, oldest first, e.g. "Toy Story,Jumanji"')
    source.add_argument("--users-file", help="a file with one user id per line: one JSON line per user")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--exclude-seen", default="true", choices=["true", "false"],
                        help="leave out what the history already holds (default true)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def recommend_main(argv):
    """``run.py recommend``: print recommendations; returns the exit code."""
    from recbole_gru4rec.recommend import Recommender

    args = recommend_parser().parse_args(argv)
    exclude_seen = args.exclude_seen == "true"
    recommender = Recommender(args.checkpoint)
    if args.users_file:
        if not os.path.isfile(args.users_file):
            raise UsageError(f"--users-file={args.users_file}: no such file")
        with open(args.users_file, encoding="utf-8") as f:
            users = [line.strip() for line in f if line.strip()]
        if not users:
            raise UsageError(f"--users-file={args.users_file} holds no user id")
        for user, items in zip(users, recommender.for_users(users, args.topk, exclude_seen)):
            print(json.dumps({"user": user, "recommendations": items}))
        return 0
    if args.user is not None:
        subject, items = f"user {args.user}", recommender.for_user(args.user, args.topk, exclude_seen)
    elif args.history is not None:
        history = [item.strip() for item in args.history.split(",") if item.strip()]
        subject, items = f"history {','.join(history)}", recommender.for_history(history, args.topk, exclude_seen)
    else:
        titles = [title.strip() for title in args.history_titles.split(",") if title.strip()]
        subject, items = f"history {'; '.join(titles)}", recommender.for_titles(titles, args.topk, exclude_seen)
    if args.json:
        print(json.dumps({"query": subject, "recommendations": items}))
    else:
        print(f"Top {len(items)} for {subject}:")
        print(f"{'rank':>4}  {'item':>6}  {'score':>9}  title (year)")
        for item in items:
            year = f" ({item['year']})" if item["year"] else ""
            print(f"{item['rank']:>4}  {item['item_id']:>6}  {item['score']:>9.4f}  {item['title']}{year}")
    return 0


def leaderboard_main(argv):
    """``run.py --leaderboard ...``; returns the exit code."""
    from recbole_gru4rec.leaderboard.runner import DEFAULT_CHECKPOINT_ROOT, LeaderboardStopped, run_leaderboard

    flags, overrides = split_flags(argv, {"dataset": "ml-100k", "models": None, "config_files": "",
                                          "time_budget_min": None, "output_dir": "results", "rerun": "false",
                                          "seeds": None, "n_seeds": None, "shared_cores": "false",
                                          "checkpoint_dir": DEFAULT_CHECKPOINT_ROOT, "ray_address": None,
                                          "cpus_per_run": "1", "gpus_per_run": "0"},
                                   refused={"model": "use --models=A,B,...",
                                            "seed": "use --seeds=S,S,... or --n_seeds=N",
                                            "per_user_file": "each run writes one beside the leaderboard",
                                            "resume": "run the same leaderboard command again to resume",
                                            "result_file": "it writes OUTPUT_DIR/leaderboard-DATASET.json",
                                            "saved": "it keeps each entry's checkpoints to resume from"})
    if flags["models"] is None:
        raise UsageError("--leaderboard needs --models=MODEL[:CONFIG.yaml],... e.g. --models=GRU4RecPaper,GRU4Rec,SASRec,NARM,Pop")
    rerun = boolean_flag("rerun", flags["rerun"])
    minutes = None if flags["time_budget_min"] is None else positive_minutes(flags["time_budget_min"])
    seeds, n_seeds = seed_flags(flags["seeds"], flags["n_seeds"])
    try:
        board = run_leaderboard(
            flags["dataset"], flags["models"], [path for path in flags["config_files"].split(",") if path], overrides,
            time_budget_min=minutes, output_dir=flags["output_dir"], rerun=rerun, seeds=seeds, n_seeds=n_seeds,
            shared_cores=boolean_flag("shared_cores", flags["shared_cores"]), checkpoint_root=flags["checkpoint_dir"],
            ray_address=flags["ray_address"], cpus_per_run=number_flag("cpus_per_run", flags["cpus_per_run"], float),
            gpus_per_run=number_flag("gpus_per_run", flags["gpus_per_run"], float),
            command_line=" ".join(["python run.py", "--leaderboard", *map(shlex.quote, argv)]),
        )
    except LeaderboardStopped as stop:
        print(f"run.py --leaderboard: {stop}", file=sys.stderr)
        return stop.returncode if stop.returncode > 0 else 1
    print(f"leaderboard written: {board.json_file} (and .md, .png)")
    return 0


def seed_flags(seeds, n_seeds):
    """``--seeds=S,S`` as a list of distinct integers, ``--n_seeds=N`` as a positive integer; (seeds, n_seeds)."""
    if seeds is not None and n_seeds is not None:
        raise UsageError("--seeds and --n_seeds do not go together: give one")
    if n_seeds is not None:
        count = number_flag("n_seeds", n_seeds, int)
        if count < 1:
            raise UsageError(f"--n_seeds={n_seeds}: use a positive integer")
        return None, count
    if seeds is None:
        return None, None
    values = [number_flag("seeds", part.strip(), int) for part in seeds.split(",") if part.strip()]
    if not values or len(set(values)) != len(values):
        raise UsageError(f"--seeds={seeds}: use distinct integers, e.g. --seeds=2020,2021,2022")
    return values, None


def number_flag(name, text, kind):
    """A numeric flag's value (``kind`` int or float), or a one-line error naming it."""
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"--{name}={text}: use {'an integer' if kind is int else 'a number'}") from None


def hyper_main(argv):
    """``run.py hyper ...``: a hyperparameter search; returns the exit code."""
    from recbole_gru4rec.hyper import run_search

    flags, overrides = split_flags(argv, {"model": "GRU4RecPaper", "dataset": "ml-100k", "params_file": None,
                                          "tool": "hyperopt", "algo": "exhaustive", "max_evals": "100",
                                          "output_dir": "hyper", "ray_address": "local", "cpus_per_trial": "1",
                                          "gpus_per_trial": "0", "config_files": ""})
    if flags["params_file"] is None:
        raise UsageError("hyper needs --params_file=FILE (RecBole's format, e.g. configs/GRU4RecPaper.hyper)")
    best = run_search(
        flags["model"], flags["dataset"], flags["params_file"], tool=flags["tool"], algo=flags["algo"],
        max_evals=number_flag("max_evals", flags["max_evals"], int),
        config_files=[path for path in flags["config_files"].split(",") if path], overrides=overrides,
        output_dir=flags["output_dir"], ray_address=flags["ray_address"],
        cpus_per_trial=number_flag("cpus_per_trial", flags["cpus_per_trial"], float),
        gpus_per_trial=number_flag("gpus_per_trial", flags["gpus_per_trial"], float),
    )
    trials = os.path.join(flags["output_dir"], "trials.jsonl")
    if best is None:
        print(f"no trial gave a score (every combination was refused): see {trials}")
        return 1
    print(f"best parameters: {json.dumps(best['best_params'])}")
    print(f"best validation score {best['best_valid_score']:.4f}; its test result: {json.dumps(best['test_result'])}")
    print(f"trials in {trials}, summary in {os.path.join(flags['output_dir'], 'best.json')}")
    return 0


SUBCOMMANDS = {"recommend": ("run.py recommend", recommend_main), "hyper": ("run.py hyper", hyper_main)}


def main(argv):
    """Run the command line; returns the process exit code."""
    if argv[:1] and argv[0] in SUBCOMMANDS:
        name, command = SUBCOMMANDS[argv[0]]
        try:
            return command(argv[1:])
        except (UsageError, CompatibilityError) as error:
            print(f"{name}: error: {error}", file=sys.stderr)
            return 2
    if "--leaderboard" in argv:
        try:
            return leaderboard_main([arg for arg in argv if arg != "--leaderboard"])
        except (UsageError, CompatibilityError) as error:
            print(f"run.py --leaderboard: error: {error}", file=sys.stderr)
            return 2
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    try:
        flags, overrides = parse_args(argv)
        for flag in ("result_file", "per_user_file"):
            if flags[flag] is not None and not os.path.isdir(os.path.dirname(os.path.abspath(flags[flag]))):
                raise UsageError(f"--{flag}={flags[flag]}: its folder does not exist")
        result = pipeline.run(flags["model"], flags["dataset"], flags["config_files"], overrides, saved=flags["saved"],
                              time_budget_min=flags["time_budget_min"], resume=flags["resume"],
                              per_user_file=flags["per_user_file"])
    except (UsageError, CompatibilityError) as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        if stop.checkpoint is None:
            print(f"run.py: interrupted in epoch {stop.epoch}; nothing was saved (saved=False)", file=sys.stderr)
        else:
            print(f"run.py: interrupted in epoch {stop.epoch}; the last finished epoch is saved in {stop.checkpoint}\n"
                  f"resume with: {resume_command(argv, stop.checkpoint)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("run.py: interrupted outside training (loading data or evaluating); nothing was lost", file=sys.stderr)
        return 130
    print(f"\n{result['model']} on {result['dataset']}: {result['epochs']} epochs ({result['stopped_by']}), "
          f"{result['train_events_per_second']:.0f} training events/s")
    print(format_results(result))
    if flags["result_file"]:
        write_json(flags["result_file"], result)
        print(f"results written to {flags['result_file']}")
    return 0


def console_main():
    """The ``recbole-gru4rec`` console script: ``python run.py`` under an installed name."""
    sys.exit(main(sys.argv[1:]))
