"""One-line checks of a run's config and data, made before any training starts (a run's own mistakes as
:class:`~recbole_gru4rec.errors.UsageError`; what RecBole keeps or drops quietly, as warnings)."""

import os
import urllib.error
import urllib.request
from logging import getLogger

import numpy as np
import pandas as pd
import recbole
import yaml
from recbole.trainer import Trainer

from recbole_gru4rec import registry
from recbole_gru4rec.errors import UsageError

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
