"""Every fix that RecBole 1.2.1 needs on today's libraries, in one place (imported first by the package).

* numpy < 2 and pandas < 3 are pinned in pyproject.toml; :func:`check_library_versions` turns an
  environment that overrides the pins into a one-line error instead of silently wrong data
  (pandas 3 makes RecBole's ``fillna(inplace=True)`` a no-op; numpy 2 removed ``np.float_``, which
  RecBole's ``Config`` touches, and ray 2.6.3, imported by ``recbole.quick_start``, is built for numpy 1).
  On pandas 2 that ``fillna`` still fills, and only warns that pandas 3 will not: the warning is silenced.
* torch >= 2.6 loads checkpoints with ``weights_only=True`` and refuses RecBole's own: they pickle the whole
  ``Config`` object, with protocol 4. :class:`SafeCheckpoints` makes any RecBole trainer save the config as
  plain values (and atomically), so RecBole's unchanged ``torch.load`` calls read them weights-only, and
  loading never has to be opened to arbitrary pickled objects.
* RecBole's ``Config`` reads ``--key=value`` from ``sys.argv`` by itself; :func:`recbole_argv` hides our own
  command line from it, so every override reaches RecBole once, through ``config_dict``.
* Importing RecBole's sequential models runs ``torch.autograd.set_detect_anomaly(True)`` (in its SINE
  module), which slows every later backward pass of the process several times over, RecBole's own
  baselines included. The package imports them once here and switches anomaly detection back off.
* RecBole 1.2.1 picks CUDA whenever it is present and ignores ``use_gpu``; :func:`honour_use_gpu` puts a
  ``use_gpu: False`` run on the CPU.
* ``get_model`` only knows built-in models: :func:`model_class` resolves plugin models first and refuses a
  plugin whose name is also a built-in (it would silently run the built-in).
"""

import contextlib
import importlib
import os
import pickle
import sys
import warnings
import zipfile

import numpy as np
import pandas as pd
import torch

from recbole_gru4rec.errors import UsageError


class CompatibilityError(RuntimeError):
    """The installed libraries cannot run RecBole 1.2.1 correctly."""


def _major(version):
    return int(version.split(".")[0])


def check_library_versions(numpy_version=np.__version__, pandas_version=pd.__version__):
    """Raise :class:`CompatibilityError` if numpy or pandas is too new for RecBole 1.2.1."""
    if _major(numpy_version) >= 2:
        raise CompatibilityError(
            f"numpy {numpy_version} is installed; RecBole 1.2.1 needs numpy<2 (its Config uses np.float_): "
            "pip install 'numpy<2'"
        )
    if _major(pandas_version) >= 3:
        raise CompatibilityError(
            f"pandas {pandas_version} is installed; RecBole 1.2.1 needs pandas<3 (its fillna(inplace=True) "
            "does nothing on pandas 3): pip install 'pandas<3'"
        )


check_library_versions()
warnings.filterwarnings("ignore", message="A value is trying to be set on a copy", category=FutureWarning)

_anomaly_detection = torch.is_anomaly_enabled()
import recbole.model.sequential_recommender  # noqa: E402,F401  (its SINE module switches anomaly detection on)

torch.autograd.set_detect_anomaly(_anomaly_detection)


CHECKPOINT_FORMAT = "recbole-gru4rec-checkpoint/1"


def plain(value):
    """``value`` made of JSON-like types only (enums, devices and other objects become strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class SafeCheckpoints:
    """Trainer mixin: checkpoints that ``torch.load(weights_only=True)`` reads, written atomically.

    A ``best`` checkpoint holds the model of the best validation epoch (what evaluation and ``recommend``
    load); a ``last`` checkpoint (see :class:`~recbole_gru4rec.trainer.RunControl`) holds the end of the
    latest finished epoch plus the training progress that ``--resume`` needs.
    """

    def _checkpoint_state(self, epoch, kind="best"):
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "config": plain(self.config.final_config_dict),
            "external_config": plain(self.config.external_config_dict),  # what rebuilds the Config
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        write_checkpoint(self._checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")


def write_checkpoint(state, path):
    """``torch.save`` to a temporary file, then rename: a kill while saving leaves the previous file whole."""
    partial = f"{path}.partial"
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path, kind=None):
    """A checkpoint written by this tool, loaded weights-only; anything else is a one-line error."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"checkpoint {path!r} cannot be read as a checkpoint of this tool ({reason[:120]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"checkpoint {path!r} was not written by recbole-gru4rec (expected {CHECKPOINT_FORMAT})")
    if kind is not None and checkpoint.get("kind", "best") != kind:
        raise UsageError(
            f"checkpoint {path!r} is a {checkpoint.get('kind', 'best')} checkpoint; this needs a {kind} one "
            "(training writes MODEL-TIME-last.pth beside MODEL-TIME.pth)"
        )
    return checkpoint


def honour_use_gpu(config):
    """Run on the CPU when the config says ``use_gpu: False`` (RecBole 1.2.1 would still take CUDA)."""
    if not config["use_gpu"]:
        config["device"] = torch.device("cpu")
    return config


@contextlib.contextmanager
def recbole_argv():
    """Hide the process's command line from RecBole's ``Config`` while it is built."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def plugin_models():
    """The models this package adds to RecBole, by name."""
    from recbole_gru4rec.gru4rec_paper import GRU4RecPaper

    return {"GRU4RecPaper": GRU4RecPaper}


def _recbole_model(name):
    # Look for the module file first: importing some model packages needs optional libraries (lightgbm).
    import recbole.model

    model_root = os.path.dirname(recbole.model.__file__)
    for submodule in sorted(os.listdir(model_root)):
        if os.path.isfile(os.path.join(model_root, submodule, f"{name.lower()}.py")):
            module = importlib.import_module(f"recbole.model.{submodule}.{name.lower()}")
            if hasattr(module, name):
                return getattr(module, name)
    return None


def model_class(name):
    """The model class called ``name``: a plugin model of this package, or a RecBole built-in."""
    plugins = plugin_models()
    builtin = _recbole_model(name)
    if name in plugins:
        if builtin is not None:
            raise UsageError(f"plugin model {name!r} has the name of a RecBole built-in; rename the plugin")
        model = plugins[name]
    elif builtin is not None:
        model = builtin
    else:
        raise UsageError(
            f"unknown model {name!r}: use {', '.join(plugins)} or the exact name of a RecBole model "
            "(e.g. GRU4Rec, SASRec, NARM, Pop, BPR)"
        )
    return model

