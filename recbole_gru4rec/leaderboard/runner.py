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

import ctypes
import dataclasses
import datetime
import glob
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile

import yaml

from recbole_gru4rec import options, pipeline, ray_cluster, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.leaderboard.report import Leaderboard, write_atomic

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
# Where each run's checkpoints live (one folder per dataset and run), unless --checkpoint_dir says otherwise.
DEFAULT_CHECKPOINT_ROOT = os.path.join("saved", "leaderboard")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


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


def per_user_path(dataset, entry, seed):
    """A run's per-user test metrics file, relative to the leaderboard's folder."""
    return os.path.join(f"leaderboard-{dataset}-users", f"{run_name(entry, seed)}.npz")


def latest_last_checkpoint(folder):
    """The newest ``*-last.pth`` in ``folder``, or None."""
    found = sorted(glob.glob(os.path.join(folder, "*-last.pth")), key=os.path.getmtime)
    return found[-1] if found else None


def resolve_seeds(protocol_seed, seeds, n_seeds):
    """The seeds to run: ``seeds``, else ``n_seeds`` of them from the protocol's seed on, else the protocol's."""
    if seeds is not None:
        return list(seeds)
    return [protocol_seed + offset for offset in range(n_seeds or 1)]


@dataclasses.dataclass
class Run:
    """One (entry, seed) of a leaderboard: everything its ``run.py`` process needs (plain values, so that a Ray
    task can carry it to another machine). ``seed`` None: the protocol's seed (to read the protocol from)."""

    entry: Entry
    seed: int
    dataset: str
    config_files: list
    overrides: dict
    time_budget_min: float = None
    checkpoint_root: str = DEFAULT_CHECKPOINT_ROOT

    @property
    def name(self):
        """How the log names the run."""
        return f"{self.entry.key} seed {self.seed}"

    @property
    def checkpoint_folder(self):
        """Where the run's checkpoints live, so that a later (or retried) run of it finds them."""
        return os.path.join(self.checkpoint_root, self.dataset, run_name(self.entry, self.seed))

    def config(self):
        """The resolved RecBole config the run will use (built to check it before anything trains)."""
        overrides = dict(self.overrides)
        if self.seed is not None:
            overrides.update(seed=self.seed, checkpoint_dir=self.checkpoint_folder)
        return pipeline.build_config(self.entry.model, self.dataset, list(self.config_files) + self.entry.config_files,
                                     overrides)

    def resumable_checkpoint(self):
        """The run's unfinished training to continue: its newest last checkpoint, if it has this exact config."""
        checkpoint = latest_last_checkpoint(self.checkpoint_folder)
        if checkpoint is None:
            return None
        try:
            pipeline.check_resume(self.config(), checkpoint)
        except UsageError as mismatch:
            print(f"leaderboard: {self.name}: not resuming {checkpoint} ({mismatch}); training from the start")
            return None
        return checkpoint

    def forget_checkpoints(self):
        """Remove the run's last checkpoints: nothing is left to resume."""
        for path in glob.glob(os.path.join(self.checkpoint_folder, "*-last.pth")):
            os.remove(path)

    def command(self, result_file, per_user_file, resume):
        """The ``run.py`` command line of the run."""
        files = list(self.config_files) + self.entry.config_files
        command = [sys.executable, "-m", "recbole_gru4rec", f"--model={self.entry.model}", f"--dataset={self.dataset}"]
        if files:
            command.append(f"--config_files={','.join(files)}")
        command += [f"--{key}={value}" for key, value in self.overrides.items()]
        command += [f"--seed={self.seed}", f"--checkpoint_dir={self.checkpoint_folder}",
                    f"--result_file={result_file}", f"--per_user_file={per_user_file}"]
        if self.time_budget_min is not None:
            command.append(f"--time_budget_min={self.time_budget_min}")
        if resume is not None:
            command.append(f"--resume={resume}")
        return command


def die_with_parent():
    """In a run's process, on Linux: be killed when the process that started it dies (a Ray worker killed
    mid-run must not leave its training behind, writing checkpoints beside the retried task's)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train(run, threads=None):
    """Train ``run`` as its own ``run.py`` process in the current folder, resuming its last checkpoint if it has one.

    Returns what the leaderboard records: the result record, the per-user metrics file's bytes, the machine it
    ran on. ``threads`` sets the process's torch threads (a Ray task's CPUs). Raises :class:`LeaderboardStopped`.
    """
    resume = run.resumable_checkpoint()
    environment = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with tempfile.TemporaryDirectory(prefix="leaderboard-run-") as scratch:
        result_file, per_user_file = os.path.join(scratch, "result.json"), os.path.join(scratch, "users.npz")
        command = run.command(result_file, per_user_file, resume)
        print(f"leaderboard: {run.name}" + (f" (resuming {resume})" if resume else ""), flush=True)
        print("  " + " ".join(shlex.quote(part) for part in command), flush=True)
        process = subprocess.Popen(command, env=environment, preexec_fn=die_with_parent)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            returncode = process.wait()  # the run got the same Ctrl-C: it ends after naming its checkpoint
        if returncode != 0:
            raise LeaderboardStopped(run.name, returncode)
        with open(result_file, encoding="utf-8") as f:
            result = json.load(f)
        with open(per_user_file, "rb") as f:
            per_user = f.read()
    run.forget_checkpoints()
    return {"result": result, "per_user": per_user, "machine": machine()}


def train_in(folder, run, threads):
    """:func:`train` from ``folder`` (the leaderboard command's own, where its relative paths point): a Ray task."""
    os.chdir(folder)
    return train(run, threads)


def run_leaderboard(dataset, models, config_files=(), overrides=None, time_budget_min=None, output_dir="results",
                    rerun=False, command_line="", seeds=None, n_seeds=None, shared_cores=False,
                    checkpoint_root=DEFAULT_CHECKPOINT_ROOT, ray_address=None, cpus_per_run=1, gpus_per_run=0):
    """Train and evaluate every entry of ``models`` once per seed and write the leaderboard files; returns them.

    ``seeds`` (a list) or ``n_seeds`` (that many from the protocol's seed on); neither: the protocol's seed.
    ``shared_cores`` marks the rows' time columns as measured while other work shared the machine.
    ``ray_address``: run the (entry, seed) runs as Ray tasks of ``cpus_per_run`` / ``gpus_per_run`` on that cluster
    (:mod:`~recbole_gru4rec.ray_cluster`), ``checkpoint_root`` on storage every worker sees; None: one after another here.
    """
    entries = parse_entries(models)
    overrides = dict(overrides or {})
    chosen_here = sorted(set(overrides) & {"checkpoint_dir", "result_file", "per_user_file", "seed"})
    if chosen_here:
        raise UsageError(f"--leaderboard chooses {', '.join(chosen_here)} itself; leave it out")
    for path in config_files:
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} does not exist")
    if ray_address is not None:
        ray_cluster.check_address(ray_address)
        if not cpus_per_run > 0 or not gpus_per_run >= 0:
            raise UsageError(f"--cpus_per_run={cpus_per_run} --gpus_per_run={gpus_per_run}: use cpus > 0, gpus >= 0")
    board = Leaderboard(dataset, output_dir)
    if rerun:
        board.rows = []
    plan = dict(dataset=dataset, config_files=list(config_files), overrides=overrides, time_budget_min=time_budget_min,
                checkpoint_root=os.path.abspath(checkpoint_root))
    protocol_seed = Run(entries[0], None, **plan).config()["seed"]
    runs = [Run(entry, seed, **plan) for entry in entries for seed in resolve_seeds(protocol_seed, seeds, n_seeds)]
    configs = {run.name: run.config() for run in runs}
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
    todo = []
    for run in runs:
        finished = board.row(run.entry, run.seed)
        if rerun:
            run.forget_checkpoints()
        elif finished is not None:
            if not same_config(finished["config"], pipeline.comparison_config(configs[run.name])):
                print(f"leaderboard: {run.name}: its config changed since its row was written; training it again")
            elif not os.path.isfile(os.path.join(output_dir, finished.get("per_user_file") or per_user_path(dataset, run.entry, run.seed))):
                print(f"leaderboard: {run.name}: its row has no per-user metrics file; training it again")
            else:
                print(f"leaderboard: {run.name} is already in {board.json_file} (skipped; --rerun=true trains it again)")
                continue
        todo.append(run)

    def record(run, outcome, ray=None):
        """Write a finished run's per-user file and row (only this process writes the leaderboard's files)."""
        per_user_file = per_user_path(dataset, run.entry, run.seed)
        write_atomic(os.path.join(output_dir, per_user_file), outcome["per_user"])
        result = outcome["result"]
        row = row_from(run.entry, run.seed, result, per_user_file)
        # A leaderboard may be finished over several sessions: each row says when, where and by which code.
        fewer_cores = ray is not None and ray["cpus_per_run"] < outcome["machine"]["cpu_cores"]
        row.update(date=header["date"], machine=outcome["machine"], recbole_gru4rec_commit=header["versions"]["recbole_gru4rec_commit"],
                   time_budget_min=time_budget_min, shared_cores=shared_cores or fewer_cores)
        if ray is not None:
            row["ray"] = ray
        board.add(run.entry, run.seed, row, dict(header, protocol=protocol_of(result["config"])))
        print(f"leaderboard: {run.name} done, test NDCG@10 {result['test_result'].get('ndcg@10', float('nan')):.4f}; "
              f"{board.json_file} updated", flush=True)

    if ray_address is None:
        for run in todo:
            record(run, train(run))
    else:
        train_on_ray(todo, record, ray_address, cpus_per_run, gpus_per_run)
    if board.header is None:
        raise UsageError("no leaderboard row was produced")
    board.write()
    return board


def train_on_ray(runs, record, address, cpus_per_run, gpus_per_run):
    """Train ``runs`` as Ray tasks on the cluster at ``address``, calling ``record(run, outcome, ray)`` here as each
    finishes. A task whose worker dies is retried (Ray's default, 3 times) and resumes from its last epoch
    checkpoint; a run that fails is reported after the others have finished."""
    setting = {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run}
    failures = []
    with ray_cluster.connected(address) as ray:
        # max_calls=1: each run gets a fresh worker process, so no state of one run reaches the next.
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_calls=1)(train_in)
        threads = max(1, int(cpus_per_run))
        pending = {task.remote(os.getcwd(), run, threads): run for run in runs}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready)
            try:
                outcome = ray.get(ready)
            except ray.exceptions.RayError as error:
                failures.append(f"{run.name} ({' '.join(str(error).split())[-200:]})")
                continue
            record(run, outcome, setting)
    if failures:
        raise LeaderboardStopped("; ".join(failures), 1)


class LeaderboardStopped(RuntimeError):
    """An entry's run.py process failed or was interrupted; finished rows are kept."""

    def __init__(self, key, returncode):
        super().__init__(f"{key} stopped with exit code {returncode}; the rows finished so far are kept, and the "
                         "same command resumes")
        self.returncode = returncode
