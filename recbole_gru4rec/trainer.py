"""GRU4RecPaper's trainer: RecBole's Trainer fed session-parallel mini-batches, each step by one of the step
backends of ``steps/``, under the run rules of :class:`~recbole_gru4rec.run_control.RunControl`."""

import functools
import math
import subprocess

from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_gru4rec import options
from recbole_gru4rec.optimizers import AdagradMomentum
from recbole_gru4rec.options import EXECUTION_OPTIONS
from recbole_gru4rec.run_control import RunControl
from recbole_gru4rec.session_data import SessionParallelDataLoader
from recbole_gru4rec.steps.autograd import session_loss
from recbole_gru4rec.steps.cpp import CppTrainingSteps, uncovered_reason
from recbole_gru4rec.steps.fused import FusedTrainingStep, unfused_reason
from recbole_gru4rec.steps.state import SessionState


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
        self.session_state = SessionState(model)
        self.session_loss = functools.partial(session_loss, model, self.session_state)  # the autograd step's loss

    def restart_session_state(self, seed):
        """At an epoch's start: no hidden state carried over, the extra negatives drawn anew from ``seed``."""
        self.session_state.restart(seed)

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
        loss_func = loss_func or self.session_loss
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
                unused = [name for name in EXECUTION_OPTIONS if self.config[name] is True]  # asked for, not auto
                self.logger.info(f"{' and '.join(unused)}: not used, training with autograd because of {reason}")
            self.unfused_reason = reason
        return self.fused_training_step

    def _build_fused_step(self):
        """The fused step the options ask for: in C++ (``cpp_step`` True, or ``auto`` where it can run and covers the
        loss), else compiled or plain; the log says which, and why not C++."""
        cpp_step = self.config["cpp_step"]
        if cpp_step:
            reason = uncovered_reason(self.model)
            if reason is None and cpp_step == "auto":
                reason = options.cpp_step_unavailable(self.config)
            if reason is None:
                try:
                    steps = CppTrainingSteps(self.model, self.optimizer, self.session_state)
                    self.logger.info(f"training step: the C++ step (cpp_step: {cpp_step})")
                    return steps
                except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
                    if cpp_step is True:
                        raise
                    reason = f"its build failing ({' '.join(str(error).split())[:200]})"
            self.logger.info(f"cpp_step: not used, training with the fused step in Python because of {reason}")
        return FusedTrainingStep(self.model, self.optimizer, self.session_state, self.config["compile_step"])

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
