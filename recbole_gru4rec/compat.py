"""Every fix that RecBole 1.2.1 needs on today's libraries, in one place (imported first by the package).

* numpy < 2 and pandas < 3 are pinned in pyproject.toml; :func:`check_library_versions` turns an
  environment that overrides the pins into a one-line error instead of silently wrong data
  (pandas 3 makes RecBole's ``fillna(inplace=True)`` a no-op; numpy 2 removed ``np.float_``, which
  RecBole's ``Config`` touches, and ray 2.6.3, imported by ``recbole.quick_start``, is built for numpy 1).
  On pandas 2 that ``fillna`` still fills, and only warns that pandas 3 will not: :func:`quiet_pandas_fillna`
  silences it while our runs load data (no global warning filter).
* torch >= 2.6 loads checkpoints with ``weights_only=True`` and refuses RecBole's own: they pickle the whole
  ``Config`` object, model class included. :class:`SafeCheckpoints` makes any RecBole trainer save a copy of
  the ``Config`` without the model class and with plain values (atomically), and :data:`CONFIG_TYPES`, the
  few classes such a copy holds, are allowed to torch's weights-only loader. So RecBole's unchanged
  ``torch.load`` calls (``Trainer.evaluate``, ``load_data_and_model``) read our checkpoints, and loading
  is never opened to arbitrary pickled objects.
* RecBole's ``Config`` reads ``--key=value`` from ``sys.argv`` by itself; :func:`recbole_argv` hides our own
  command line from it, so every override reaches RecBole once, through ``config_dict``.
* Importing RecBole's sequential models runs ``torch.autograd.set_detect_anomaly(True)`` (in its SINE
  module), which slows every later backward pass of the process several times over, RecBole's own
  baselines included. The package imports them once here and switches anomaly detection back off.
* RecBole 1.2.1 picks CUDA whenever it is present and ignores ``use_gpu``; :func:`honour_use_gpu` puts a
  ``use_gpu: False`` run on the CPU.
"""

import contextlib
import copy
import os
import pickle
import sys
import warnings
import zipfile

import numpy as np
import pandas as pd
import torch
import yaml

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


@contextlib.contextmanager
def quiet_pandas_fillna():
    """Silence, while RecBole loads a dataset, pandas 2's warning that RecBole's ``fillna(inplace=True)`` will
    stop filling on pandas 3 (it fills on pandas 2, which the pins keep)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A value is trying to be set on a copy", category=FutureWarning)
        yield

_anomaly_detection = torch.is_anomaly_enabled()
import recbole.model.sequential_recommender  # noqa: E402,F401  (its SINE module switches anomaly detection on)

torch.autograd.set_detect_anomaly(_anomaly_detection)

from recbole.config import Config  # noqa: E402
from recbole.model.general_recommender.pop import Pop  # noqa: E402
from recbole.utils.enum_type import EvaluatorType, InputType, ModelType  # noqa: E402


def _count_every_interaction(self, interaction):
    """Pop's training step, counting an item once per interaction. RecBole 1.2.1 writes
    ``item_cnt[item] = item_cnt[item] + 1``, which adds one per item per *batch* (RecBole issues #1844, #2198:
    its results then depend on batch size and shuffling seed, and most popular items tie)."""
    item = interaction[self.ITEM_ID]
    self.item_cnt.index_add_(0, item, torch.ones_like(item)[:, None])
    self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
    return torch.nn.Parameter(torch.zeros(1)).to(self.device)


Pop.calculate_loss = _count_every_interaction

# What a checkpoint's Config copy holds besides plain values (torch.device is allowed already).
CONFIG_TYPES = [Config, yaml.loader.FullLoader, ModelType, InputType, EvaluatorType]
if hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4 does not load weights-only by default
    torch.serialization.add_safe_globals(CONFIG_TYPES)

CHECKPOINT_FORMAT = "recbole-gru4rec-checkpoint/2"
OLD_CHECKPOINT_FORMATS = ("recbole-gru4rec-checkpoint/1",)  # the config stored as plain values only


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


def _native(value):
    """``value`` with numpy scalars turned into Python numbers, inside dicts, lists and tuples too."""
    if isinstance(value, dict):
        return {key: _native(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_native(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def portable_config(config):
    """A copy of RecBole's ``Config`` that torch loads weights-only: plain values, no model class."""
    portable = copy.copy(config)
    for name, value in vars(config).items():
        if isinstance(value, dict):
            setattr(portable, name, _native(value))
    portable.model_class = None  # a class object would have to be allowed to the loader: RecBole never reads it
    return portable


class SafeCheckpoints:
    """Trainer mixin: checkpoints that ``torch.load(weights_only=True)`` reads, written atomically.

    A ``best`` checkpoint holds the model of the best validation epoch (what evaluation and ``recommend``
    load); a ``last`` checkpoint (see :class:`~recbole_gru4rec.run_control.RunControl`) holds the end of the
    latest finished epoch plus the training progress that ``--resume`` needs.
    """

    def _checkpoint_state(self, epoch, kind="best"):
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "config": portable_config(self.config),  # what RecBole's load_data_and_model reads
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

    def save_pretrained_model(self, epoch, saved_model_file):
        """The pre-training trainers' hook (S3Rec's, RaCT's): the same loadable checkpoint, at their path."""
        write_checkpoint(self._checkpoint_state(epoch), saved_model_file)
        self.saved_model_file = saved_model_file


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
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in (CHECKPOINT_FORMAT, *OLD_CHECKPOINT_FORMATS):
        raise UsageError(f"checkpoint {path!r} was not written by recbole-gru4rec (expected {CHECKPOINT_FORMAT})")
    if isinstance(checkpoint.get("config"), Config):  # read as plain values, as the older format stored them
        checkpoint["external_config"] = plain(checkpoint["config"].external_config_dict)
        checkpoint["config"] = plain(checkpoint["config"].final_config_dict)
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
