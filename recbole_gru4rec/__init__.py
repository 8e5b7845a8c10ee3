"""recbole-gru4rec: a paper-faithful GRU4Rec (Hidasi et al., ICLR 2016) for RecBole 1.2.1.

Importing the package applies the RecBole compatibility fixes (:mod:`recbole_gru4rec.compat`) and registers
GRU4RecPaper with RecBole (:mod:`recbole_gru4rec.registry`): from then on ``run_recbole(model="GRU4RecPaper")``,
``Config(model="GRU4RecPaper", ...)``, ``HyperTuning`` and ``load_data_and_model`` find it by name. The model
and its training code are imported when first used, so tools such as the leaderboard's report load none of it.
"""

import importlib

from recbole_gru4rec import compat  # noqa: F401  (applies the RecBole compatibility fixes first)
from recbole_gru4rec.registry import get_model, get_trainer, register

register()

# Public name -> the module that defines it, imported on first use (PEP 562).
LAZY = {"GRU4RecPaper": "recbole_gru4rec.gru4rec_paper", "SessionParallelTrainer": "recbole_gru4rec.trainer",
        "SessionParallelDataLoader": "recbole_gru4rec.session_data"}
__all__ = [*LAZY, "get_model", "get_trainer", "register"]
__version__ = "0.2.0"


def __getattr__(name):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'recbole_gru4rec' has no attribute {name!r}")
