"""One training run, the way RecBole's ``run_recbole`` does it, for plugin and built-in models alike.

Config files are merged in this order (later wins): the model's defaults (GRU4RecPaper.yaml for plugin
models; RecBole loads its own for built-ins), ``properties/sequential.yaml`` (the shared protocol),
``properties/datasets/<dataset>.yaml`` when it exists (both in the package), the user's ``--config_files``,
then ``--key=value``.
"""

import os
import resource
import statistics
import time
import urllib.error
import urllib.request
from logging import getLogger

import numpy as np
import pandas as pd
import recbole
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed

from recbole_gru4rec import compat, options, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.trainer import with_run_control

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")
PROTOCOL_FILE = os.path.join(CONFIG_DIR, "sequential.yaml")
# Resolved config values that a comparison between runs depends on; recorded in every result.
COMPARED_KEYS = (
    "seed", "MAX_ITEM_LIST_LENGTH", "eval_args", "metrics", "topk", "valid_metric", "stopping_step", "epochs",
    "train_batch_size", "learner", "learning_rate", "weight_decay", "user_inter_num_interval",
    "item_inter_num_interval", "val_interval", "device",
)


def dataset_config_file(dataset):
    """properties/datasets/<dataset>.yaml, or None when the dataset has no file of its own."""
    path = os.path.join(CONFIG_DIR, "datasets", f"{dataset}.yaml")
    return path if os.path.exists(path) else None


def build_config(model="GRU4RecPaper", dataset="ml-100k", config_files=(), overrides=None):
    """RecBole's Config for ``model`` on ``dataset``, validated before any data is read."""
    model_cls = registry.get_model(model)
    files = [options.DEFAULTS_FILE] if model in registry.PLUGINS else []
    files.append(PROTOCOL_FILE)
    files += [path for path in [dataset_config_file(dataset)] if path]
    for path in config_files:
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} does not exist")
        files.append(path)
    try:
        with compat.recbole_argv():
            config = Config(model=model_cls, dataset=dataset, config_file_list=files, config_dict=dict(overrides or {}))
    except yaml.YAMLError as error:
        raise UsageError(f"a config file is not valid YAML: {' '.join(str(error).split())}") from None
    except RECBOLE_CONFIG_ERRORS as error:
        raise UsageError(f"RecBole refuses the config: {one_line(error)}") from None
    compat.honour_use_gpu(config)
    check_trainer(config)
    check_valid_metric(config)
    check_positive_integers(config)
    if model in registry.PLUGINS:
        user_keys = [key for key in config.external_config_dict if key not in config.internal_config_dict]
        for key, option in options.misspelt_options(user_keys):
            getLogger().warning(f"config key {key!r} is no GRU4RecPaper or RecBole option: did you mean {option!r}?")
        options.validate(config)
        options.validate_execution(config)  # this command trains here: the machine must have what they need
    return config


# What RecBole's Config and data preparation raise for a value they refuse (a bad topk, eval_args order, ...).
RECBOLE_CONFIG_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError, AttributeError, SyntaxError)


def one_line(error):
    """An exception's message on one line (RecBole's can span several; a KeyError's is its quoted key)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


# RecBole options whose bad values RecBole itself accepts and then fails on much later, or trains nothing.
POSITIVE_INTEGERS = ("epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH")


def check_positive_integers(config):
    """Each of :data:`POSITIVE_INTEGERS` that the config has must be an integer >= 1."""
    for key in POSITIVE_INTEGERS:
        value = config[key]
        if key in config and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{key}={value!r} is not allowed: expected an integer >= 1")


def check_trainer(config):
    """run.py trains models whose trainer has RecBole's epoch loop (Trainer and its subclasses) and hooks into it."""
    trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])
    if not issubclass(trainer, Trainer):
        raise UsageError(
            f"model {config['model']!r} trains with RecBole's {trainer.__name__}, which has no epoch loop to checkpoint, "
            "budget or resume: run.py takes models trained by RecBole's Trainer or a subclass; use RecBole's run_recbole"
        )


def check_valid_metric(config):
    """Early stopping needs ``valid_metric`` among the computed metrics (RecBole fails after an epoch otherwise)."""
    name, _, k = config["valid_metric"].lower().partition("@")
    metrics = [metric.lower() for metric in config["metrics"]]
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if name not in metrics or (k and int(k) not in topk):
        raise UsageError(
            f"valid_metric={config['valid_metric']} is not computed: metrics are {config['metrics']} at topk={topk}; "
            "pick one of them or add it"
        )


def _recbole_download_url(dataset):
    url_file = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    with open(url_file, encoding="utf-8") as f:
        return yaml.safe_load(f).get(dataset)


def check_dataset_files(config):
    """Fail fast, in one line, when the dataset's files are missing and cannot be downloaded."""
    dataset = config["dataset"]
    inter_file = os.path.join(config["data_path"], f"{dataset}.inter")
    if os.path.isfile(inter_file):
        return
    url = _recbole_download_url(dataset)
    parent = os.path.dirname(os.path.normpath(config["data_path"]))
    where = f"put {dataset}.inter (RecBole atomic files) in {config['data_path']}/ or pass --data_path=DIR with DIR/{dataset}/{dataset}.inter"
    if url is None:
        raise UsageError(f"dataset {dataset!r} not found: no file {inter_file}; {where}")
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UsageError(f"dataset {dataset!r} is not in {parent or '.'}/ and cannot be downloaded ({reason}); {where}") from None


def check_inter_file(config):
    """Refuse, in one line, an interaction file without the user, item or numeric time column.

    RecBole itself would stop with a KeyError or a pandas conversion traceback; here the message names
    the file, the missing column or the first bad value and its line.
    """
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    separator, encoding = config["field_separator"] or "\t", config["encoding"] or "utf-8"
    with open(path, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(separator)
    types = dict(column.split(":", 1) if ":" in column else (column, "?") for column in header)
    for role in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"):
        field = config[role]
        if field not in types:
            raise UsageError(
                f"{path} has no column {field!r} ({role}); its header is {separator.join(header)!r}: sequential "
                f"models need {config['USER_ID_FIELD']}, {config['ITEM_ID_FIELD']} and {config['TIME_FIELD']}"
            )
    time_field = config["TIME_FIELD"]
    if types[time_field] != "float":
        raise UsageError(f"{path}: column {time_field!r} has type {types[time_field]!r}; it must be {time_field}:float (numbers)")
    times = pd.read_csv(path, sep=separator, encoding=encoding, usecols=[f"{time_field}:float"], dtype=str,
                        keep_default_na=False, engine="python" if len(separator) > 1 else "c").iloc[:, 0]
    bad = pd.to_numeric(times.str.strip(), errors="coerce").isna().to_numpy().nonzero()[0]
    if len(bad):
        raise UsageError(
            f"{path}: {time_field} {times.iloc[bad[0]]!r} on line {bad[0] + 2} is not a number ({len(bad)} such "
            "lines); give times as numbers, e.g. Unix seconds"
        )


def load_dataset(config):
    """RecBole's ``create_dataset``, with its configuration errors (an empty table after filtering) in one line."""
    try:
        return create_dataset(config)
    except ValueError as error:
        filters = ", ".join(f"{key}={config[key]}" for key in ("user_inter_num_interval", "item_inter_num_interval",
                                                              "val_interval") if config[key])
        hint = f" (filters: {filters})" if filters else ""
        raise UsageError(f"RecBole cannot load dataset {config['dataset']!r}: {error}{hint}") from None


def check_dataset(config, dataset):
    """Refuse, in one line, a dataset without training targets; warn about rows RecBole keeps or drops quietly."""
    time_field = config["TIME_FIELD"]
    if not time_field or time_field not in dataset.field2type:
        raise UsageError(
            f"dataset {config['dataset']!r} has no time field {time_field!r}: sequential models need it "
            "(set TIME_FIELD and load it in load_col)"
        )
    table = dataset.inter_feat  # the loaded table, before splitting
    events_per_user = table[dataset.uid_field].value_counts()
    if len(events_per_user) == 0 or events_per_user.max() < 2:
        raise UsageError(
            f"dataset {config['dataset']!r} has no user with 2 or more events left after filtering: nothing to train on"
        )
    n_items = dataset.item_num - 1  # id 0 is padding
    if max(config["topk"]) > n_items:
        raise UsageError(
            f"dataset {config['dataset']!r} has {n_items} items, fewer than topk={config['topk']}: set --topk to at most {n_items}"
        )
    logger = getLogger()
    single = int((events_per_user == 1).sum())
    if single:
        logger.warning(f"{single} users have a single event: nothing to predict from, so they are in no split")
    duplicates = int(table.duplicated([dataset.uid_field, dataset.iid_field, time_field]).sum())
    if duplicates:
        logger.warning(
            f"{duplicates} rows repeat the user, item and time of an earlier row; they are kept as repeated events "
            "(RecBole's default): set rm_dup_inter: first to drop repeated user-item pairs"
        )


def check_split(train_data, test_data):
    """Warn when test targets are items that no training sequence holds (they keep untrained scores)."""
    train = train_data._dataset
    seen = np.zeros(train.item_num, dtype=bool)
    seen[train.inter_feat[train.iid_field].numpy()] = True
    list_field = train.iid_field + train.config["LIST_SUFFIX"]
    if list_field in train.inter_feat:
        seen[train.inter_feat[list_field].numpy()] = True  # histories too (padding id 0 is never a target)
    targets = test_data._dataset.inter_feat[train.iid_field].numpy()
    cold = int((~seen[targets]).sum())
    if cold:
        getLogger().warning(
            f"{cold} of {len(targets)} test targets are items never seen in training; they are ranked with "
            "untrained scores, as in RecBole"
        )


def peak_rss_mb():
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def trainer_class(config):
    """The trainer RecBole picks for the model (SessionParallelTrainer for GRU4RecPaper), under RunControl."""
    return with_run_control(registry.get_trainer(config["MODEL_TYPE"], config["model"]))


def check_resume(config, checkpoint_path):
    """The ``last`` checkpoint at ``checkpoint_path``, if it was trained with exactly this config."""
    checkpoint = compat.load_checkpoint(checkpoint_path, kind="last")
    current = options.without_execution_options(compat.plain(config.final_config_dict))
    trained = options.without_execution_options(checkpoint["config"])
    for key in ["model", "dataset", *sorted(set(current) | set(trained))]:
        if current.get(key) != trained.get(key):
            raise UsageError(
                f"--resume={checkpoint_path}: the checkpoint was trained with {key}={trained.get(key)!r}, "
                f"this command gives {current.get(key)!r}; repeat the original command line"
            )
    return checkpoint


def run(model="GRU4RecPaper", dataset="ml-100k", config_files=(), overrides=None, saved=True, evaluate_test=True,
        time_budget_min=None, resume=None):
    """Train ``model`` on ``dataset`` with early stopping, evaluate on test, and return the result record.

    ``evaluate_test=False`` leaves the test split untouched (hyperparameter search looks at validation only).
    ``time_budget_min`` stops training after the first epoch that ends past it (``stopped_by: time_budget``).
    ``resume`` is a ``last`` checkpoint of a run with the same config, continued from its epoch.
    Ctrl-C raises :class:`~recbole_gru4rec.trainer.TrainingInterrupted`.
    """
    if time_budget_min is not None and not time_budget_min > 0:
        raise UsageError(f"time_budget_min={time_budget_min} must be a positive number of minutes")
    config = build_config(model, dataset, config_files, overrides)
    if resume is not None:
        check_resume(config, resume)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    check_dataset_files(config)
    check_inter_file(config)
    data = load_dataset(config)
    check_dataset(config, data)
    logger.info(data)
    try:
        train_data, valid_data, test_data = data_preparation(config, data)
    except RECBOLE_CONFIG_ERRORS as error:
        raise UsageError(f"RecBole cannot split dataset {config['dataset']!r} with this config: {one_line(error)}") from None
    check_split(train_data, test_data)
    train_dataset = train_data._dataset

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_cls = registry.get_model(model)
    network = model_cls(config, train_dataset).to(config["device"])
    logger.info(network)
    trainer = trainer_class(config)(config, network)
    trainer.time_budget_s = None if time_budget_min is None else 60.0 * time_budget_min
    if resume is not None:
        trainer.resume_checkpoint(resume)

    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_start = time.perf_counter()
    test_result = None
    if evaluate_test:
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    test_seconds = time.perf_counter() - test_start

    epoch_seconds = trainer.epoch_seconds
    n_events = len(train_dataset)  # one prefix-augmented row per training target, for every model alike
    median_epoch = statistics.median(epoch_seconds) if epoch_seconds else float("nan")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": {k: float(v) for k, v in (best_valid_result or {}).items()},
        "test_result": {k: float(v) for k, v in (test_result or {}).items()},
        "epochs": len(epoch_seconds),
        "stopped_by": trainer.stopped_by,
        "train_loss_per_epoch": [float(trainer.train_loss_dict[epoch]) for epoch in sorted(trainer.train_loss_dict)],
        "train_seconds_per_epoch": [round(s, 4) for s in epoch_seconds],
        "train_seconds_total": round(sum(epoch_seconds), 4),
        "train_events_per_epoch": n_events,
        "train_events_per_second": round(n_events / median_epoch, 1),
        "test_seconds": round(test_seconds, 4),
        "test_users": len(test_data._dataset),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "checkpoint": trainer.saved_model_file if saved else None,
        "last_checkpoint": trainer.last_checkpoint_file,
        "config": comparison_config(config),
        "execution": {key: config[key] for key in options.EXECUTION_OPTIONS if key in config},
    }


def comparison_config(config):
    """The resolved config values that matter when comparing runs, as plain JSON values."""
    keys = list(COMPARED_KEYS)
    if config["model"] in registry.PLUGINS:
        keys += [key for key in options.without_execution_options(options.load_defaults()) if key not in keys]
    else:
        keys += [key for key in ("embedding_size", "hidden_size", "num_layers", "n_layers", "n_heads",
                                 "inner_size", "dropout_prob", "hidden_dropout_prob", "attn_dropout_prob",
                                 "loss_type") if key in config]
    return {key: compat.plain(config[key]) for key in keys}
