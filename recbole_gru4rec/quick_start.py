"""RecBole's quick-start functions for this package, in RecBole's signatures (as RecBole-GNN and its siblings offer).

    from recbole_gru4rec.quick_start import run_recbole_gru4rec, objective_function
    run_recbole_gru4rec(model="GRU4RecPaper", dataset="ml-100k", config_dict={"epochs": 5})
    HyperTuning(objective_function, params_file="configs/GRU4RecPaper.hyper",
                fixed_config_file_list=["my.yaml"])   # my.yaml names model and dataset

Both run what ``run.py`` runs: this project's protocol (``properties/sequential.yaml``), the model's defaults,
epoch checkpoints and the non-finite-loss stop. RecBole's own ``run_recbole`` and ``objective_function`` work
too after ``import recbole_gru4rec``, with RecBole's protocol defaults instead of ours.
"""

import yaml

from recbole_gru4rec import pipeline
from recbole_gru4rec.errors import UsageError


def run_recbole_gru4rec(model="GRU4RecPaper", dataset="ml-100k", config_file_list=None, config_dict=None, saved=True):
    """Train, validate and test ``model`` on ``dataset``; RecBole's result dict plus this project's record."""
    return pipeline.run(model, dataset, config_file_list or (), config_dict, saved=saved)


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """One trial of RecBole's ``HyperTuning``: ``model`` and ``dataset`` come from the dict or the files.

    A combination of values that the options refuse (say ``embedding_size: 64`` with
    ``constrained_embedding: True``) is no crash of the search: it returns the worst score, ``refused``
    holding the reason, so that the search goes on to the next trial.
    """
    config_dict = dict(config_dict or {})
    files = list(config_file_list or ())
    model, dataset = (config_dict.pop(key, None) or _from_files(key, files) for key in ("model", "dataset"))
    if model is None or dataset is None:
        raise UsageError("objective_function needs 'model' and 'dataset' in config_dict or in a config file")
    try:
        return run_recbole_gru4rec(model, dataset, files, config_dict, saved=saved)
    except UsageError as refused:
        config = pipeline.build_config(model, dataset, files)  # the search's fixed part is valid, or this raises
        bigger = config["valid_metric_bigger"]
        return {"model": model, "best_valid_score": float("-inf") if bigger else float("inf"),
                "valid_score_bigger": bigger, "best_valid_result": {}, "test_result": {}, "refused": str(refused)}


def _from_files(key, files):
    """The value of ``key`` in the last of ``files`` that sets it (later files win, as in RecBole)."""
    value = None
    for path in files:
        with open(path, encoding="utf-8") as f:
            value = (yaml.safe_load(f) or {}).get(key, value)
    return value
