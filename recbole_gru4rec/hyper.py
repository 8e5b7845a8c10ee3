"""Hyperparameter search the RecBole way: ``python run.py hyper --model=M --dataset=D --params_file=FILE``.

The params file has RecBole's format, one parameter a line: ``NAME choice [v1, v2]``, ``NAME uniform LOW,HIGH``,
``NAME quniform LOW,HIGH,Q`` (integers when LOW, HIGH and Q are) or ``NAME loguniform LOW,HIGH`` (the bounds
are natural logs, as in hyperopt). ``--tool=hyperopt`` searches with RecBole's ``HyperTuning`` (``--algo``
exhaustive, random or bayes); ``--tool=ray`` with Ray Tune, each trial a Ray task with ``--cpus_per_trial`` and
``--gpus_per_trial`` on the cluster at ``--ray_address`` (``local``: one started here for the search; ``auto``
or ``HOST:PORT``: a running one, whose nodes all see the same paths and have this package installed).

Every trial is one :func:`recbole_gru4rec.quick_start.objective_function` run: this project's protocol,
model chosen on validation, tested on test. This process appends each finished trial to
``OUTPUT_DIR/trials.jsonl`` as it finishes (a killed search keeps them) and writes ``OUTPUT_DIR/best.json``
at the end: the parameters with the best validation score and their test result.
"""

import ast
import json
import math
import os
import time
import uuid

from recbole_gru4rec import checks, compat, options, pipeline, ray_cluster, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.quick_start import objective_function

TOOLS = ("hyperopt", "ray")
ALGOS = ("exhaustive", "random", "bayes")
PARAM_KINDS = ("choice", "uniform", "quniform", "loguniform")


class Param:
    """One line of a params file: a name, a kind from :data:`PARAM_KINDS` and its values or bounds."""

    def __init__(self, name, kind, values):
        self.name, self.kind, self.values = name, kind, values

    def cast(self, value):
        """A sampled value as the option takes it: quniform's whole-number floats become integers."""
        if self.kind == "quniform" and all(float(v).is_integer() for v in self.values):
            return int(round(value))
        return value

    def extremes(self):
        """The values a trial can take at the ends of the range (every value of a choice)."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values[:2]
        if self.kind == "loguniform":
            low, high = math.exp(low), math.exp(high)
        return [self.cast(low), self.cast(high)]


def read_params_file(path):
    """The parameters of a RecBole params file, or a one-line error naming the bad line."""
    if not os.path.isfile(path):
        raise UsageError(f"--params_file={path}: no such file")
    params = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"--params_file={path}, line {number}"
            parts = line.split(None, 2)
            if len(parts) < 3 or parts[1] not in PARAM_KINDS:
                raise UsageError(f"{where}: {line.strip()!r} is not 'NAME KIND VALUES' with KIND one of {', '.join(PARAM_KINDS)}")
            name, kind, text = parts[0], parts[1], "".join(parts[2].split())
            try:
                values = ast.literal_eval(text) if kind == "choice" else tuple(float(v) for v in text.split(","))
            except (ValueError, SyntaxError):
                values = None
            expected = {"choice": "a list such as [1, 2]", "quniform": "LOW,HIGH,Q"}.get(kind, "LOW,HIGH")
            size = 3 if kind == "quniform" else 2
            if not (isinstance(values, list) and values) if kind == "choice" else (values is None or len(values) != size):
                raise UsageError(f"{where}: {name} {kind} {parts[2].strip()!r}: expected {expected}")
            if kind != "choice" and not values[0] < values[1]:
                raise UsageError(f"{where}: {name} {kind} needs LOW < HIGH, got {values[0]} and {values[1]}")
            params.append(Param(name, kind, values))
    if not params:
        raise UsageError(f"--params_file={path} holds no parameter")
    return params


def check_space(model, params):
    """Refuse, before any trial, a misspelt GRU4RecPaper option or a value no combination could make valid.

    Rules between options (``momentum`` needs ``learner: adagrad_momentum``) are left to each trial, which
    a refused combination ends with the worst score.
    """
    if model not in registry.PLUGINS:
        return  # RecBole's models check their own options
    for name, option in options.misspelt_options([param.name for param in params]):
        raise UsageError(f"--params_file: {name} is no GRU4RecPaper or RecBole option: did you mean {option!r}?")
    for param in params:
        check, allowed = options.CHECKS.get(param.name, (None, None))
        for value in param.extremes() if check else []:
            if not check(value):
                raise UsageError(f"--params_file: {param.name}={value!r} is not allowed: expected {allowed}")


class TrialLog:
    """``trials.jsonl`` (appended, one line a finished trial) and ``best.json`` in the output folder.

    Only the searching process writes them. Lines carry the search's start time, so a search run again
    appends after the lines of the earlier one and ``best.json`` speaks of the latest search alone.
    """

    def __init__(self, output_dir, tool):
        os.makedirs(output_dir, exist_ok=True)
        self.trials_file = os.path.join(output_dir, "trials.jsonl")
        self.best_file = os.path.join(output_dir, "best.json")
        self.search = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {tool}"
        self.trials = []

    def add(self, params, result, seconds):
        """Append one finished trial (written at once)."""
        record = {"search": self.search, "trial": len(self.trials) + 1, "params": params, "seconds": round(seconds, 2),
                  **{key: result[key] for key in ("best_valid_score", "valid_score_bigger", "best_valid_result",
                                                  "test_result", "refused") if key in result}}
        self.trials.append(record)
        with open(self.trials_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_best(self):
        """best.json: the trial of this search with the best validation score; returns it (None if none scored)."""
        scored = [trial for trial in self.trials if "refused" not in trial]
        if not scored:
            return None
        pick = max if scored[0]["valid_score_bigger"] else min
        best = pick(scored, key=lambda trial: trial["best_valid_score"])
        summary = {"search": self.search, "best_params": best["params"], "best_valid_score": best["best_valid_score"],
                   "best_valid_result": best["best_valid_result"], "test_result": best["test_result"],
                   "trials": len(self.trials), "refused": len(self.trials) - len(scored)}
        with open(self.best_file, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        return summary


def run_trial(fixed, files, params, values):
    """One trial: ``values`` (name -> sampled value) over the ``fixed`` config; returns (params, result, seconds)."""
    chosen = {param.name: param.cast(values[param.name]) for param in params}
    # A folder of its own: RecBole names a checkpoint by model and second, and Ray starts trials side by side.
    folder = os.path.join(str(fixed.get("checkpoint_dir", "saved")), f"trial-{uuid.uuid4().hex[:12]}")
    start = time.perf_counter()
    result = objective_function({**fixed, **chosen, "checkpoint_dir": folder}, files)
    return compat.plain(chosen), result, time.perf_counter() - start  # hyperopt hands out numpy scalars


def hyperopt_search(fixed, files, params, log, algo, max_evals):
    """RecBole's HyperTuning over ``params``, each trial logged as it finishes."""
    from hyperopt import hp
    from recbole.trainer import HyperTuning

    builders = {"choice": lambda p: hp.choice(p.name, p.values), "uniform": lambda p: hp.uniform(p.name, *p.values),
                "quniform": lambda p: hp.quniform(p.name, *p.values), "loguniform": lambda p: hp.loguniform(p.name, *p.values)}
    space = {param.name: builders[param.kind](param) for param in params}

    def trial(config_dict, config_file_list):
        chosen, result, seconds = run_trial(fixed, config_file_list, params, config_dict)
        log.add(chosen, result, seconds)
        return {**result, "model": fixed["model"]}

    HyperTuning(trial, space=space, fixed_config_file_list=files, algo=algo, max_evals=max_evals).run()


def _ray_trial(values, fixed, files, params):
    """A Ray Tune trial: one :func:`run_trial`, its result reported to the searching process."""
    from ray.air import session

    chosen, result, seconds = run_trial(fixed, files, params, values)
    session.report({"valid_score": result["best_valid_score"], "result": result, "chosen": chosen, "seconds": seconds})


def ray_search(fixed, files, params, log, algo, max_evals, ray_address, cpus_per_trial, gpus_per_trial, bigger):
    """Ray Tune over ``params`` on the cluster at ``ray_address``; each trial logged as it finishes."""
    from ray import tune

    class LogTrials(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            report = trial.last_result
            log.add(report["chosen"], report["result"], report["seconds"])

    exhaustive = algo == "exhaustive"
    builders = {"choice": (lambda p: tune.grid_search(p.values)) if exhaustive else (lambda p: tune.choice(p.values)),
                "uniform": lambda p: tune.uniform(*p.values), "quniform": lambda p: tune.quniform(*p.values),
                "loguniform": lambda p: tune.loguniform(math.exp(p.values[0]), math.exp(p.values[1]))}
    space = {param.name: builders[param.kind](param) for param in params}
    search_alg = None
    if algo == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch()
    with ray_cluster.connected(ray_address, log_to_driver=False):
        tune.run(
            tune.with_parameters(_ray_trial, fixed=fixed, files=files, params=params), config=space,
            num_samples=1 if exhaustive else max_evals, search_alg=search_alg, metric="valid_score",
            mode="max" if bigger else "min", resources_per_trial={"cpu": cpus_per_trial, "gpu": gpus_per_trial},
            callbacks=[LogTrials()], local_dir=os.path.join(os.path.dirname(log.trials_file), "ray"),
            chdir_to_trial_dir=False, verbose=0,
        )


def run_search(model, dataset, params_file, tool="hyperopt", algo="exhaustive", max_evals=100, config_files=(),
               overrides=None, output_dir="hyper", ray_address="local", cpus_per_trial=1, gpus_per_trial=0):
    """Search ``params_file``'s space for ``model`` on ``dataset``; returns best.json's content.

    Every input is checked before the first trial: the tool, the algorithm, the file, the option names and
    values it can produce, and the fixed config (built once, as each trial will).
    """
    if tool not in TOOLS:
        raise UsageError(f"--tool={tool}: use one of {', '.join(TOOLS)}")
    if algo not in ALGOS:
        raise UsageError(f"--algo={algo}: use one of {', '.join(ALGOS)}")
    if not (isinstance(max_evals, int) and max_evals >= 1):
        raise UsageError(f"--max_evals={max_evals}: use an integer >= 1")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise UsageError(f"--cpus_per_trial={cpus_per_trial} --gpus_per_trial={gpus_per_trial}: use cpus > 0, gpus >= 0")
    if tool == "ray":
        ray_cluster.check_address(ray_address)
    params = read_params_file(params_file)
    check_space(model, params)
    if algo == "exhaustive" and any(param.kind != "choice" for param in params):
        raise UsageError(f"--algo=exhaustive needs 'choice' for every parameter of {params_file}; use --algo=random or bayes")
    files = [os.path.abspath(path) for path in config_files]  # trials may run in another folder (Ray)
    config = pipeline.build_config(model, dataset, files, overrides)  # the fixed part, refused here if bad
    checks.check_dataset_files(config)
    fixed = {**dict(overrides or {}), "model": model, "dataset": dataset}
    log = TrialLog(output_dir, tool)
    if tool == "hyperopt":
        hyperopt_search(fixed, files, params, log, algo, max_evals)
    else:
        ray_search(fixed, files, params, log, algo, max_evals, ray_address, cpus_per_trial, gpus_per_trial,
                   config["valid_metric_bigger"])
    return log.write_best()
