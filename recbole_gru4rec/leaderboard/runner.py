"""Several models, one protocol: ``python run.py --leaderboard --dataset=D --models=A,B:config.yaml,... --seeds=S,S``.

Each entry is ``MODEL`` or ``MODEL:CONFIG.yaml``; the file holds that model's own hyperparameters only
(protocol keys are refused, see :data:`PROTOCOL_KEYS`). Every (entry, seed) runs as its own ``run.py``
process, one after another (its peak memory is its own; never two at once), with the same protocol files
and early-stopping rule, and writes its test users' metrics beside the leaderboard (``leaderboard-D-users/``).
After each run, ``leaderboard-D.json`` (one row per run), ``.md`` and ``.png`` are rewritten, so a killed
leaderboard keeps every finished run; the same command later skips finished runs and resumes an unfinished
one from its last epoch checkpoint (a run whose config changed since its row was written, or whose per-user
file is missing, is trained again).
"""

import datetime
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

import yaml

from recbole_gru4rec import options, pipeline, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.leaderboard.report import Leaderboard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Keys that define the comparison itself; an entry's own config file must not change them.
PROTOCOL_KEYS = (
    "seed", "reproducibility", "dataset", "data_path", "load_col", "eval_args", "metrics", "topk", "valid_metric",
    "valid_metric_bigger", "eval_batch_size", "epochs", "stopping_step", "eval_step", "MAX_ITEM_LIST_LENGTH",
    "user_inter_num_interval", "item_inter_num_interval", "val_interval", "rm_dup_inter", "filter_inter_by_user_or_item",
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "use_gpu", "gpu_id", "checkpoint_dir", "eval_ties",
)
# Protocol keys that may differ between the runs of one leaderboard: each row records its own.
PER_RUN_KEYS = ("seed",)


class Entry:
    """One leaderboard row to produce: a model and, optionally, the config files of its hyperparameters
    (``MODEL:a.yaml+b.yaml``: merged in that order, later wins)."""

    def __init__(self, spec):
        model, _, files = spec.partition(":")
        if not model or (files and not all(files.split("+"))):
            raise UsageError(f"--models entry {spec!r}: expected MODEL, MODEL:CONFIG.yaml or MODEL:A.yaml+B.yaml")
        registry.get_model(model)  # a one-line error for an unknown model, before anything runs
        self.model = model
        self.config_files = files.split("+") if files else []
        stems = [os.path.splitext(os.path.basename(path))[0] for path in self.config_files]
        # GRU4RecPaper-tuned.yaml: "tuned"; with eval-history-full.yaml after it: "tuned+eval-history-full"
        self.config_name = "+".join(stem.removeprefix(f"{model}-") or stem for stem in stems) or "default"
        for path in self.config_files:
            check_entry_config(path)

    @property
    def config_file(self):
        """The entry's config files as given (``a.yaml+b.yaml``), or None."""
        return "+".join(self.config_files) or None

    @property
    def key(self):
        """What identifies the entry's row."""
        return f"{self.model}:{self.config_name}"


def check_entry_config(path):
    """An entry's config file exists, is YAML, and sets no protocol key."""
    if not os.path.isfile(path):
        raise UsageError(f"--models: config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            settings = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"--models: config file {path!r} is not valid YAML ({' '.join(str(error).split())[:100]})") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--models: config file {path!r} must hold KEY: VALUE lines")
    shared = sorted(set(settings) & set(PROTOCOL_KEYS))
    if shared:
        raise UsageError(
            f"--models: config file {path!r} sets {', '.join(shared)}: the protocol is shared by every model "
            "(give it to the whole leaderboard with --config_files)"
        )


def parse_entries(models):
    """``--models=A,B:file.yaml`` as a list of :class:`Entry`, each key once."""
    entries = [Entry(spec.strip()) for spec in models.split(",") if spec.strip()]
    if not entries:
        raise UsageError("--models is empty: give e.g. --models=GRU4RecPaper,GRU4Rec,SASRec,NARM,Pop")
    keys = [entry.key for entry in entries]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise UsageError(f"--models lists {', '.join(duplicates)} twice")
    return entries


def machine():
    """CPU model and cores, GPU model when one is used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "gpu": gpu, "torch_threads": torch.get_num_threads()}


def versions():
    """Versions of everything a result depends on."""
    import numpy
    import pandas
    import recbole
    import torch

    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "recbole": recbole.__version__,
            "numpy": numpy.__version__, "pandas": pandas.__version__, "recbole_gru4rec_commit": commit}


def protocol_of(compared_config):
    """The protocol part of a run's recorded config (identical for every row of one leaderboard)."""
    return {key: value for key, value in compared_config.items() if key in PROTOCOL_KEYS and key not in PER_RUN_KEYS}


def row_from(entry, seed, result, per_user_file):
    """A leaderboard row from the result record of one ``run.py`` process (``per_user_file`` relative to the
    leaderboard's folder)."""
    seconds = result["train_seconds_per_epoch"]
    return {
        "model": entry.model,
        "config_name": entry.config_name,
        "config_file": entry.config_file,
        "seed": seed,
        "per_user_file": per_user_file,
        "test_result": result["test_result"],
        "best_valid_result": result["best_valid_result"],
        "epochs": result["epochs"],
        "stopped_by": result["stopped_by"],
        "train_seconds_per_epoch": round(statistics.median(seconds), 3) if seconds else None,
        "train_seconds_total": result["train_seconds_total"],
        "train_events_per_second": result["train_events_per_second"],
        "eval_seconds": result["test_seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "config": result["config"],
        "execution": result.get("execution", {}),
    }


def same_config(recorded, current):
    """Whether a row's recorded config is the current one. Rows written before fused_step / compile_step became
    execution options still list them; rows written before an option existed lack it, and were trained with
    its default (an option's default keeps the earlier behaviour; a changed behaviour bumps ``mechanisms``)."""
    recorded = options.without_execution_options(recorded)
    defaults = options.load_defaults() if current.get("mechanisms") is not None else {}
    missing = {key: value for key, value in current.items()
               if key not in recorded and key in defaults and value == defaults[key]}
    return {**recorded, **missing} == current


def run_name(entry, seed):
    """The file-name stem of one (entry, seed) run."""
    return f"{entry.key.replace(':', '-')}-seed{seed}"


def checkpoint_dir(dataset, entry, seed):
    """Where a run's checkpoints live, so that a later run of the same leaderboard finds them."""
    return os.path.join("saved", "leaderboard", dataset, run_name(entry, seed))


def per_user_path(dataset, entry, seed):
    """A run's per-user test metrics file, relative to the leaderboard's folder."""
    return os.path.join(f"leaderboard-{dataset}-users", f"{run_name(entry, seed)}.npz")


def latest_last_checkpoint(folder):
    """The newest ``*-last.pth`` in ``folder``, or None."""
    found = sorted(glob.glob(os.path.join(folder, "*-last.pth")), key=os.path.getmtime)
    return found[-1] if found else None


def entry_config(entry, dataset, config_files, overrides, seed=None):
    """The resolved RecBole config the entry's run will use (built here to check it before anything trains);
    ``seed`` None: the protocol's."""
    overrides = dict(overrides)
    if seed is not None:
        overrides.update(seed=seed, checkpoint_dir=checkpoint_dir(dataset, entry, seed))
    return pipeline.build_config(entry.model, dataset, list(config_files) + entry.config_files, overrides)


def resolve_seeds(protocol_seed, seeds, n_seeds):
    """The seeds to run: ``seeds``, else ``n_seeds`` of them from the protocol's seed on, else the protocol's."""
    if seeds is not None:
        return list(seeds)
    return [protocol_seed + offset for offset in range(n_seeds or 1)]


def resumable_checkpoint(entry, config):
    """The run's unfinished training to continue: its newest last checkpoint, if it has this exact config."""
    checkpoint = latest_last_checkpoint(checkpoint_dir(config["dataset"], entry, config["seed"]))
    if checkpoint is None:
        return None
    try:
        pipeline.check_resume(config, checkpoint)
    except UsageError as mismatch:
        print(f"leaderboard: {entry.key}: not resuming {checkpoint} ({mismatch}); training from the start")
        return None
    return checkpoint


def entry_command(entry, seed, dataset, config_files, overrides, time_budget_min, result_file, per_user_file, resume):
    """The ``run.py`` command line of one (entry, seed) run."""
    files = list(config_files) + entry.config_files
    command = [sys.executable, "-m", "recbole_gru4rec", f"--model={entry.model}", f"--dataset={dataset}"]
    if files:
        command.append(f"--config_files={','.join(files)}")
    command += [f"--{key}={value}" for key, value in overrides.items()]
    command += [f"--seed={seed}", f"--checkpoint_dir={checkpoint_dir(dataset, entry, seed)}",
                f"--result_file={result_file}", f"--per_user_file={per_user_file}"]
    if time_budget_min is not None:
        command.append(f"--time_budget_min={time_budget_min}")
    if resume is not None:
        command.append(f"--resume={resume}")
    return command


def run_leaderboard(dataset, models, config_files=(), overrides=None, time_budget_min=None, output_dir="results",
                    rerun=False, command_line="", seeds=None, n_seeds=None, shared_cores=False):
    """Train and evaluate every entry of ``models`` once per seed and write the leaderboard files; returns them.

    ``seeds`` (a list) or ``n_seeds`` (that many from the protocol's seed on); neither: the protocol's seed.
    ``shared_cores`` marks the rows' time columns as measured while other work shared the machine.
    """
    entries = parse_entries(models)
    overrides = dict(overrides or {})
    shared = sorted(set(overrides) & {"checkpoint_dir", "result_file", "per_user_file", "seed"})
    if shared:
        raise UsageError(f"--leaderboard chooses {', '.join(shared)} itself; leave it out")
    for path in config_files:
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} does not exist")
    board = Leaderboard(dataset, output_dir)
    if rerun:
        board.rows = []
    protocol_seed = entry_config(entries[0], dataset, config_files, overrides)["seed"]
    runs = [(entry, seed) for entry in entries for seed in resolve_seeds(protocol_seed, seeds, n_seeds)]
    configs = {(entry.key, seed): entry_config(entry, dataset, config_files, overrides, seed) for entry, seed in runs}
    protocols = {json.dumps(protocol_of(pipeline.comparison_config(config)), sort_keys=True)
                 for config in configs.values()}
    if board.rows:
        protocols.add(json.dumps(protocol_of(board.header["protocol"]), sort_keys=True))
    if len(protocols) > 1:
        raise UsageError(
            f"the entries (or the rows already in {board.json_file}) do not share one protocol: "
            f"{' vs '.join(sorted(protocols))[:300]}; use another --output_dir or --rerun=true"
        )
    header = {"dataset": dataset, "command": command_line, "machine": machine(), "versions": versions(),
              "time_budget_min": time_budget_min, "date": datetime.date.today().isoformat()}
    os.makedirs(os.path.join(output_dir, f"leaderboard-{dataset}-users"), exist_ok=True)
    for entry, seed in runs:
        name = f"{entry.key} seed {seed}"
        per_user_file = per_user_path(dataset, entry, seed)
        finished = board.row(entry, seed)
        if finished is not None and not rerun:
            if not same_config(finished["config"], pipeline.comparison_config(configs[(entry.key, seed)])):
                print(f"leaderboard: {name}: its config changed since its row was written; training it again")
            elif not os.path.isfile(os.path.join(output_dir, finished.get("per_user_file") or per_user_file)):
                print(f"leaderboard: {name}: its row has no per-user metrics file; training it again")
            else:
                print(f"leaderboard: {name} is already in {board.json_file} (skipped; --rerun=true trains it again)")
                continue
        result_file = os.path.join(output_dir, f".leaderboard-{dataset}-{run_name(entry, seed)}.json")
        resume = None if rerun else resumable_checkpoint(entry, configs[(entry.key, seed)])
        command = entry_command(entry, seed, dataset, config_files, overrides, time_budget_min, result_file,
                                os.path.join(output_dir, per_user_file), resume)
        print(f"leaderboard: {name}" + (f" (resuming {resume})" if resume else ""), flush=True)
        print("  " + " ".join(shlex.quote(part) for part in command), flush=True)
        process = subprocess.Popen(command)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            returncode = process.wait()  # the run got the same Ctrl-C: it ends after naming its checkpoint
        if returncode != 0:
            raise LeaderboardStopped(name, returncode)
        with open(result_file, encoding="utf-8") as f:
            result = json.load(f)
        os.remove(result_file)
        for finished in glob.glob(os.path.join(checkpoint_dir(dataset, entry, seed), "*-last.pth")):
            os.remove(finished)  # the row is written: nothing left to resume
        row = row_from(entry, seed, result, per_user_file)
        # A leaderboard may be finished over several sessions: each row says when, where and by which code.
        row.update(date=header["date"], machine=header["machine"], recbole_gru4rec_commit=header["versions"]["recbole_gru4rec_commit"],
                   time_budget_min=time_budget_min, shared_cores=shared_cores)
        board.add(entry, seed, row, dict(header, protocol=protocol_of(result["config"])))
        print(f"leaderboard: {name} done, test NDCG@10 {result['test_result'].get('ndcg@10', float('nan')):.4f}; "
              f"{board.json_file} updated", flush=True)
    if board.header is None:
        raise UsageError("no leaderboard row was produced")
    board.write()
    return board


class LeaderboardStopped(RuntimeError):
    """An entry's run.py process failed or was interrupted; finished rows are kept."""

    def __init__(self, key, returncode):
        super().__init__(f"{key} stopped with exit code {returncode}; the rows finished so far are kept, and the "
                         "same command resumes")
        self.returncode = returncode
