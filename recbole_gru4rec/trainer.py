"""The training loop of every run: RecBole's trainers with resumable, budgeted, guarded epochs.

:class:`RunControl` hooks into RecBole's trainer of each model (:func:`with_run_control`) and into
:class:`SessionParallelTrainer`, GRU4RecPaper's trainer, so baselines and GRU4RecPaper train under the same
rules while each trainer's own ``fit`` runs its loop.
"""

import functools
import math
import os
import time

from recbole.trainer import Trainer
from recbole.utils import init_seed, set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_gru4rec import options
from recbole_gru4rec.compat import SafeCheckpoints, load_checkpoint, write_checkpoint
from recbole_gru4rec.cpp_step import CppTrainingSteps, uncovered_reason
from recbole_gru4rec.fused_step import FusedTrainingStep, unfused_reason
from recbole_gru4rec.optimizers import AdagradMomentum
from recbole_gru4rec.options import EXECUTION_OPTIONS
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


class _TimeBudgetReached(Exception):
    """Raised at the start of an epoch once the time budget is spent: it leaves the trainer's own loop."""


class RunControl(SafeCheckpoints):
    """Trainer mixin: hooks into any RecBole trainer's own ``fit`` (which stays the trainer's), adding

    * a ``last`` checkpoint at the start of every epoch and at the end of ``fit`` (atomic), holding the state
      after the latest finished epoch, from which :meth:`resume_checkpoint` continues a killed run to the
      same result as an uninterrupted one;
    * per-epoch seeding: epoch ``e`` seeds every random stream with :func:`epoch_seed` ``(seed, e)``
      (Python, numpy, torch, RecBole's shuffling generator, the model's ``reseed`` hook if it has one),
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
        reseed = getattr(self.model, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def _save_last(self, epoch):
        state = self._checkpoint_state(epoch, kind="last")
        state.update(
            best_checkpoint=self.saved_model_file,
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
        self.saved_model_file = checkpoint["best_checkpoint"]
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


class SessionParallelEpochs(Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer`, changed where GRU4RecPaper needs it.

    * ``fit`` replaces RecBole's prefix-augmented training loader by a :class:`SessionParallelDataLoader`
      over the same training split, so RecBole's documented pipeline trains session-parallel unchanged.
    * ``_train_epoch`` is RecBole's loop without what a one-event step does not need (per-step device
      copies: the loader builds its steps on the device; mixed precision and multi-GPU are refused by the
      option check).
    * ``learner: adagrad_momentum`` builds :class:`AdagradMomentum` (with ``momentum``).
    * With ``fused_step: True`` (the default) and a setting it covers, each step is a
      :class:`FusedTrainingStep` (no autograd graph, no sparse gradients); otherwise autograd, as RecBole does.
      With ``cpp_step: True`` as well, the same arithmetic runs in C++, many steps per call (:class:`CppTrainingSteps`).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.fused_training_step, self.unfused_reason = None, None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train as RecBole does, one session-parallel step per optimizer update."""
        if not isinstance(train_data, SessionParallelDataLoader):
            train_data = SessionParallelDataLoader(self.config, train_data._dataset)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        fused_step = self._fused_step() if loss_func is None else None
        if isinstance(fused_step, CppTrainingSteps):
            return self._train_epoch_in_cpp(fused_step, train_data, epoch_idx, show_progress)
        loss_func = loss_func or self.model.calculate_loss
        steps = train_data
        if show_progress:
            steps = tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
        train_step = fused_step if fused_step is not None else functools.partial(self._autograd_step, loss_func)
        total_loss = 0.0
        for interaction in steps:
            # Checked after the update: a non-finite loss stops the run before any checkpoint holds its weights.
            value = train_step(interaction).item()
            self._check_finite(value)
            total_loss += value
        return total_loss

    def _train_epoch_in_cpp(self, cpp_steps, train_data, epoch_idx, show_progress):
        """One epoch through :class:`CppTrainingSteps`, with the loss check of every step."""
        progress = None
        if show_progress:
            progress = tqdm(total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
        total_loss = 0.0
        for losses in cpp_steps.train_epoch(train_data.next_epoch()):
            for value in losses.tolist():
                self._check_finite(value)
                total_loss += value
            if progress is not None:
                progress.update(len(losses))
        if progress is not None:
            progress.close()
        return total_loss

    def _check_finite(self, value):
        """RecBole's check of a step's loss; :class:`RunControl` puts a stricter one in its place."""
        if math.isnan(value):
            raise ValueError("Training loss is nan")

    def _autograd_step(self, loss_func, interaction):
        """One optimizer update through autograd, as RecBole's trainer makes it; returns the loss."""
        self.optimizer.zero_grad()
        loss = loss_func(interaction)
        loss.backward()
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        return loss

    def _fused_step(self):
        """The fused training step for this model and optimizer, or None (with the reason logged once)."""
        if self.fused_training_step is None and self.config["fused_step"]:
            reason = unfused_reason(self.model, self.optimizer, self.config)
            if reason is None:
                self.fused_training_step = self._build_fused_step()
            elif reason != self.unfused_reason:
                unused = [name for name in EXECUTION_OPTIONS if self.config[name]]
                self.logger.info(f"{' and '.join(unused)}: not used, training with autograd because of {reason}")
            self.unfused_reason = reason
        return self.fused_training_step

    def _build_fused_step(self):
        """The fused step the options ask for: in C++ (``cpp_step``, for the losses it covers), compiled or plain."""
        if self.config["cpp_step"]:
            reason = uncovered_reason(self.model)
            if reason is None:
                return CppTrainingSteps(self.model, self.optimizer)
            self.logger.info(f"cpp_step: not used, training with the fused step in Python because of {reason}")
        return FusedTrainingStep(self.model, self.optimizer, self.config["compile_step"])

    def _build_optimizer(self, **kwargs):
        # adagrad too: AdagradMomentum with momentum 0 is torch's Adagrad, with a faster sparse update.
        learner = kwargs.get("learner", self.learner).lower()
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        if learner not in ("adagrad", "adagrad_momentum") or weight_decay:
            return super()._build_optimizer(**kwargs)
        params = kwargs.get("params", self.model.parameters())
        learning_rate = kwargs.get("learning_rate", self.learning_rate)
        momentum = (self.config["momentum"] or 0.0) if learner == "adagrad_momentum" else 0.0
        return AdagradMomentum(params, lr=learning_rate, momentum=momentum)


class SessionParallelTrainer(RunControl, SessionParallelEpochs):
    """GRU4RecPaper's trainer (what RecBole's ``get_trainer`` returns for it): session-parallel epochs
    under :class:`RunControl`. The execution options are checked against this machine here, before training."""

    def __init__(self, config, model):
        options.validate_execution(config)
        super().__init__(config, model)
