"""SessionParallelTrainer: its optimizer choice and its stop at the first non-finite loss."""

import copy

import pytest
import torch

from recbole_gru4rec import GRU4RecPaper, SessionParallelDataLoader, SessionParallelTrainer
from recbole_gru4rec.optimizers import AdagradMomentum
from recbole_gru4rec.run_control import NonFiniteLossError


def trainer_with(ml100k, **options):
    config, _, train, _, _ = ml100k
    config = copy.deepcopy(config)
    for key, value in options.items():
        config[key] = value
    return SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset)), config, train


@pytest.mark.parametrize("learner,momentum,expected", [("adagrad", 0.0, AdagradMomentum),
                                                       ("adagrad_momentum", 0.5, AdagradMomentum),
                                                       ("adam", 0.0, torch.optim.Adam)])
def test_optimizer_follows_the_learner(ml100k, learner, momentum, expected):
    trainer, _, _ = trainer_with(ml100k, learner=learner, momentum=momentum)
    assert type(trainer.optimizer) is expected
    assert trainer.optimizer.param_groups[0].get("momentum", 0.0) == momentum


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_training_stops_at_the_first_non_finite_loss(ml100k, bad):
    trainer, config, train = trainer_with(ml100k)
    calls = []

    def loss_going_bad(interaction):
        calls.append(1)
        loss = trainer.session_loss(interaction)
        return loss * bad if len(calls) == 4 else loss

    with pytest.raises(NonFiniteLossError, match=f"training loss is {bad} at epoch 2, step 3"):
        trainer._train_epoch(SessionParallelDataLoader(config, train._dataset), 2, loss_func=loss_going_bad)
    assert len(calls) == 4
