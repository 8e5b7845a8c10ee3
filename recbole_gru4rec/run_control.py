"""The run rules of every training run: RecBole's trainers with resumable, budgeted, guarded epochs.

:class:`RunControl` hooks into RecBole's trainer of each model (:func:`with_run_control`) and into GRU4RecPaper's
:class:`~recbole_gru4rec.trainer.SessionParallelTrainer`, so baselines and GRU4RecPaper train under the same
rules while each trainer's own ``fit`` runs its loop.
"""

import math
import os
import time

from recbole.utils import init_seed

from recbole_gru4rec.compat import SafeCheckpoints, load_checkpoint, write_checkpoint
from recbole_gru4rec.session_data import SessionParallelDataLoader, epoch_seed


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training; ``checkpoint`` is the last checkpoint to resume from (None when unsaved)."""

    def __init__(self, epoch, checkpoint):
        super().__init__(f"training interrupted in epoch {epoch}")
        self.epoch = epoch
        self.checkpoint = checkpoint


def last_checkpoint_path(best_checkpoint_path):
    """Where the checkpoint of the latest finished epoch lives, beside the best model's checkpoint."""
    root, extension = os.path.splitext(best_checkpoint_path)
    return f"{root}-last{extension}"


def best_checkpoint_beside(last_file, checkpoint):
    """The best model's checkpoint of the run whose ``last`` checkpoint ``checkpoint`` was read from ``last_file``.

    The two are written side by side and only the name is recorded, so a folder that was moved, restored or is
    mounted at another path on another machine resumes where it now is.
    """
    return os.path.join(os.path.dirname(os.path.abspath(last_file)), os.path.basename(checkpoint["best_checkpoint"]))


class _TimeBudgetReached(Exception):
    """Raised at the start of an epoch once the time budget is spent: it leaves the trainer's own loop."""


class RunControl(SafeCheckpoints):
    """Trainer mixin: hooks into any RecBole trainer's own ``fit`` (which stays the trainer's), adding

    * a ``last`` checkpoint at the start of every epoch and at the end of ``fit`` (atomic), holding the state
      after the latest finished epoch, from which :meth:`resume_checkpoint` continues a killed run to the
      same result as an uninterrupted one;
    * per-epoch seeding: epoch ``e`` seeds every random stream with :func:`epoch_seed` ``(seed, e)``
      (Python, numpy, torch, RecBole's shuffling generator, the trainer's ``restart_session_state`` if it has one),
      so an epoch's draws do not depend on what ran before it in the process;
    * a time budget (``time_budget_s``, checked when an epoch would start) and ``stopped_by``:
      ``early_stopping``, ``time_budget`` or ``max_epochs``;
    * a stop at the first non-finite loss, naming epoch, step and value (RecBole only checks NaN);
    * :class:`TrainingInterrupted` on Ctrl-C, naming the checkpoint to resume from.

    The hooks are the methods RecBole's trainers call in their loops (``_train_epoch``, ``_check_nan``,
    ``_save_checkpoint``, ``resume_checkpoint``): a trainer whose ``fit`` does more than RecBole's base one
    (S3Rec's pre-training, NCL's E-step) keeps doing it.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.time_budget_s = None
        self.stopped_by = None
        self.epoch_seconds = []  # training time of each epoch, validation excluded
        self.fit_seconds = 0.0  # training and validation time, what the budget counts
        self.last_checkpoint_file = None
        self.epoch_in_progress, self.epoch_step = None, 0
        self.finished_epoch = -1
        self._saves_last, self._fit_started = False, None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """The trainer's own ``fit``, with epoch checkpoints, the time budget and Ctrl-C handled around it."""
        self._saves_last = saved
        if saved:
            self.last_checkpoint_file = self.last_checkpoint_file or last_checkpoint_path(self.saved_model_file)
        self.finished_epoch = self.start_epoch - 1
        self._fit_started = time.perf_counter() - self.fit_seconds
        self.stopped_by = "max_epochs"
        try:
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        except _TimeBudgetReached:
            self.stopped_by = "time_budget"
            self.logger.info(f"Time budget of {self.time_budget_s:.0f} s reached after epoch {self.finished_epoch}")
            result = self.best_valid_score, self.best_valid_result
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.epoch_in_progress, self.last_checkpoint_file if saved else None) from None
        if self.cur_step > self.stopping_step:  # RecBole's early_stopping stops exactly then
            self.stopped_by = "early_stopping"
        self._end_epoch_span()
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """The trainer's own epoch, seeded, timed and checkpointed before it starts."""
        self._end_epoch_span()
        if (self.time_budget_s is not None and epoch_idx > self.start_epoch
                and self.fit_seconds >= self.time_budget_s):
            raise _TimeBudgetReached
        self.epoch_in_progress, self.epoch_step = epoch_idx, 0
        self._seed_epoch(epoch_idx, train_data)
        start = time.perf_counter()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - start)
        self.finished_epoch = epoch_idx
        return losses

    def _end_epoch_span(self):
        """Everything of the finished epoch is done (its validation too): count its time, save it as ``last``."""
        if self._fit_started is not None:
            self.fit_seconds = time.perf_counter() - self._fit_started
        if self._saves_last:
            self._save_last(self.finished_epoch)

    def _seed_epoch(self, epoch, train_data):
        seed = epoch_seed(self.config["seed"], epoch)
        init_seed(seed, self.config["reproducibility"])
        if isinstance(train_data, SessionParallelDataLoader):
            train_data.set_epoch(epoch)
        else:
            train_data.generator.manual_seed(seed)  # RecBole's loaders shuffle with their own generator
        restart = getattr(self, "restart_session_state", None)
        if restart is not None:
            restart(seed)

    def _save_last(self, epoch):
        state = self._checkpoint_state(epoch, kind="last")
        state.update(
            best_checkpoint=os.path.basename(self.saved_model_file),
            best_valid_result=None if self.best_valid_result is None else {k: float(v) for k, v in self.best_valid_result.items()},
            train_loss_dict={int(k): float(v) for k, v in self.train_loss_dict.items()},
            epoch_seconds=list(self.epoch_seconds),
            fit_seconds=self.fit_seconds,
        )
        write_checkpoint(state, self.last_checkpoint_file)

    def resume_checkpoint(self, resume_file):
        """Continue from a ``last`` checkpoint: model, optimizer, early-stopping state and history."""
        checkpoint = load_checkpoint(resume_file, kind="last")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"]
        self.train_loss_dict = dict(checkpoint["train_loss_dict"])
        self.epoch_seconds = list(checkpoint["epoch_seconds"])
        self.fit_seconds = checkpoint["fit_seconds"]
        self.saved_model_file = best_checkpoint_beside(resume_file, checkpoint)
        self.last_checkpoint_file = str(resume_file)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _check_nan(self, loss):
        # RecBole's _train_epoch calls this once per step; it only looked for NaN.
        self._check_finite(loss.item())

    def _check_finite(self, value):
        if not math.isfinite(value):
            last = self.last_checkpoint_file or "not written (saved=False)"
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {self.epoch_in_progress}, step {self.epoch_step}; "
                f"training stopped, the last good checkpoint is {last}"
            )
        self.epoch_step += 1


def with_run_control(trainer_cls):
    """``trainer_cls`` (any RecBole trainer) with :class:`RunControl` mixed in."""
    if issubclass(trainer_cls, RunControl):
        return trainer_cls
    return type(trainer_cls.__name__, (RunControl, trainer_cls), {"__doc__": trainer_cls.__doc__})
