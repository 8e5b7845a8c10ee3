"""SessionParallelTrainer: RecBole's Trainer, fed with session-parallel mini-batches."""

import math

from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_gru4rec.compat import SafeCheckpoints
from recbole_gru4rec.optimizers import AdagradMomentum
from recbole_gru4rec.session_data import SessionParallelDataLoader


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


class SessionParallelTrainer(SafeCheckpoints, Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer`, changed where GRU4RecPaper needs it.

    * ``fit`` replaces RecBole's prefix-augmented training loader by a :class:`SessionParallelDataLoader`
      over the same training split, so RecBole's documented pipeline trains session-parallel unchanged.
    * ``_train_epoch`` is RecBole's loop without what a one-event step does not need (per-step device
      copies: the loader builds its steps on the device; mixed precision and multi-GPU are refused by the
      option check), and it stops at the first non-finite loss, naming epoch and step.
    * ``learner: adagrad_momentum`` builds :class:`AdagradMomentum` (with ``momentum``).
    * Checkpoints load with ``torch.load(weights_only=True)`` (see :class:`~recbole_gru4rec.compat.SafeCheckpoints`).
    Everything else (evaluation, early stopping, logging) is RecBole's own.
    """

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train as RecBole does, one session-parallel step per optimizer update."""
        if not isinstance(train_data, SessionParallelDataLoader):
            train_data = SessionParallelDataLoader(self.config, train_data._dataset)
        train_data.set_epoch(self.start_epoch)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        steps = train_data
        if show_progress:
            steps = tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
        total_loss = 0.0
        for step, interaction in enumerate(steps):
            self.optimizer.zero_grad()
            loss = loss_func(interaction)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"training loss is {value} at epoch {epoch_idx}, step {step}; training stopped, the last good "
                    f"checkpoint is {self.saved_model_file}"
                )
            total_loss += value
            loss.backward()
            if self.clip_grad_norm:
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
        return total_loss

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
