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
from logging import getLogger

import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed

from recbole_gru4rec import checks, compat, evaluation, options, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.run_control import best_checkpoint_beside, with_run_control

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
    except checks.RECBOLE_CONFIG_ERRORS as error:
        raise UsageError(f"RecBole refuses the config: {checks.one_line(error)}") from None
    compat.honour_use_gpu(config)
    checks.check_trainer(config)
    checks.check_valid_metric(config)
    checks.check_positive_integers(config)
    evaluation.tie_policy(config)
    if model in registry.PLUGINS:
        user_keys = [key for key in config.external_config_dict if key not in config.internal_config_dict]
        for key, option in options.misspelt_options(user_keys):
            getLogger().warning(f"config key {key!r} is no GRU4RecPaper or RecBole option: did you mean {option!r}?")
        options.validate(config)
        options.validate_execution(config)  # this command trains here: the machine must have what they need
    return config


def data_only_config(dataset, data_path=None):
    """The protocol's config for ``dataset`` under RecBole's Pop (no model options), for scripts that only read data."""
    overrides = {"state": "WARNING", **({"data_path": data_path} if data_path else {})}
    return build_config("Pop", dataset, overrides=overrides)


def load_dataset(config):
    """RecBole's ``create_dataset``, with its configuration errors (an empty table after filtering) in one line."""
    try:
        with compat.quiet_pandas_fillna():
            return create_dataset(config)
    except ValueError as error:
        filters = ", ".join(f"{key}={config[key]}" for key in ("user_inter_num_interval", "item_inter_num_interval",
                                                              "val_interval") if config[key])
        hint = f" (filters: {filters})" if filters else ""
        raise UsageError(f"RecBole cannot load dataset {config['dataset']!r}: {error}{hint}") from None


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
    # Checkpoints may be moved, or reached by another path (relative, or a Ray node's mount): the folder they are
    # written to is not part of what the run computes.
    compared = (set(current) | set(trained)) - {"checkpoint_dir"}
    for key in ["model", "dataset", *sorted(compared)]:
        if current.get(key) != trained.get(key):
            raise UsageError(
                f"--resume={checkpoint_path}: the checkpoint was trained with {key}={trained.get(key)!r}, "
                f"this command gives {current.get(key)!r}; repeat the original command line"
            )
    best = best_checkpoint_beside(checkpoint_path, checkpoint)
    if checkpoint["best_valid_result"] is not None and not os.path.isfile(best):
        raise UsageError(f"--resume={checkpoint_path}: the best model's checkpoint {os.path.basename(best)} is not "
                         f"beside it; copy the run's checkpoint folder whole")
    return checkpoint


def run(model="GRU4RecPaper", dataset="ml-100k", config_files=(), overrides=None, saved=True, evaluate_test=True,
        time_budget_min=None, resume=None, per_user_file=None):
    """Train ``model`` on ``dataset`` with early stopping, evaluate on test, and return the result record.

    ``evaluate_test=False`` leaves the test split untouched (hyperparameter search looks at validation only).
    ``time_budget_min`` stops training after the first epoch that ends past it (``stopped_by: time_budget``).
    ``resume`` is a ``last`` checkpoint of a run with the same config, continued from its epoch.
    ``per_user_file`` receives each test user's metrics (:mod:`~recbole_gru4rec.evaluation`).
    Ctrl-C raises :class:`~recbole_gru4rec.run_control.TrainingInterrupted`.
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
    checks.check_dataset_files(config)
    checks.check_inter_file(config)
    data = load_dataset(config)
    checks.check_dataset(config, data)
    logger.info(data)
    try:
        train_data, valid_data, test_data = data_preparation(config, data)
    except checks.RECBOLE_CONFIG_ERRORS as error:
        raise UsageError(f"RecBole cannot split dataset {config['dataset']!r} with this config: {checks.one_line(error)}") from None
    checks.check_split(train_data, test_data)
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
    if evaluate_test and per_user_file is not None:
        save_user_metrics(per_user_file, trainer.evaluator.last_struct, config, test_data._dataset)

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
        "per_user_file": per_user_file if evaluate_test else None,
        "config": comparison_config(config),
        "execution": {key: config[key] for key in options.EXECUTION_OPTIONS if key in config},
    }


def save_user_metrics(path, struct, config, dataset):
    """Each test user's metrics (by user token) from the test evaluation's struct, to ``path``."""
    users = dataset.id2token(config["USER_ID_FIELD"], struct[evaluation.USERS].numpy())
    evaluation.save(path, users, evaluation.metrics_of_users(struct, config))


def comparison_config(config):
    """The resolved config values that matter when comparing runs, as plain JSON values."""
    keys = list(COMPARED_KEYS)
    if config["model"] in registry.PLUGINS:
        keys += [key for key in options.without_execution_options(options.load_defaults()) if key not in keys]
    else:
        keys += [key for key in ("embedding_size", "hidden_size", "num_layers", "n_layers", "n_heads",
                                 "inner_size", "dropout_prob", "hidden_dropout_prob", "attn_dropout_prob",
                                 "loss_type") if key in config]
    compared = {key: compat.plain(config[key]) for key in keys}
    if evaluation.tie_policy(config) != "recbole":  # recorded when set, so rows from before the option still compare
        compared["eval_ties"] = config["eval_ties"]
    if config["model"] in registry.PLUGINS:
        compared["mechanisms"] = options.MECHANISMS
    return compared
