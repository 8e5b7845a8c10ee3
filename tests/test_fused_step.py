"""The fused training step makes the updates of the autograd path (session_loss, backward, optimizer.step), and
its compiled and C++ forms make the updates of the fused step."""

import logging
import math
import os
import shutil

import pytest
import torch
from recbole.utils import init_seed

from conftest import build, random_sessions_folder
from recbole_gru4rec import GRU4RecPaper, SessionParallelDataLoader, SessionParallelTrainer
from recbole_gru4rec.steps import cpp as cpp_step
from recbole_gru4rec.steps.cpp import CppTrainingSteps
from recbole_gru4rec.steps.fused import FusedTrainingStep
from recbole_gru4rec.run_control import NonFiniteLossError

NO_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is None

SETTINGS = {
    "paper TOP1": {},
    "BPR, input dropout": {"loss_type": "BPR", "dropout_prob_input": 0.3},
    "TOP1, elu, 16 negatives": {"final_activation": "elu-0.5", "n_sample": 16},
    "CE, 32 negatives, logQ": {"loss_type": "CE", "final_activation": "linear", "n_sample": 32, "logq": 0.5,
                               "dropout_prob_hidden": 0.2},
    "BPR-max, two layers, feedforward": {"loss_type": "BPR-max", "num_layers": 2, "ff_hidden_size": 24,
                                         "n_sample": 16, "final_activation": "elu-1"},
    "TOP1-max, momentum": {"loss_type": "TOP1-max", "learner": "adagrad_momentum", "momentum": 0.4, "n_sample": 8},
    "PyTorch's GRU cell, two layers, dropout": {"gru_cell": "pytorch", "num_layers": 2, "dropout_prob_input": 0.2},
    "CE, target copies as negatives": {"loss_type": "CE", "final_activation": "linear", "n_sample": 32,
                                                "remove_accidental_hits": False},
    "BPR, target copies as negatives": {"loss_type": "BPR", "n_sample": 16, "remove_accidental_hits": False},
    "CE, each step's mean (loss_scale rows)": {"loss_type": "CE", "final_activation": "linear", "n_sample": 8,
                                                        "loss_scale": "rows"},
    "TOP1, each step's mean (loss_scale rows)": {"n_sample": 8, "loss_scale": "rows"},
    "BPR, leaky-0.1": {"loss_type": "BPR", "final_activation": "leaky-0.1", "n_sample": 8},
    "TOP1, selu-1.05-1.67": {"final_activation": "selu-1.05-1.67", "n_sample": 8},
    "TOP1, relu": {"final_activation": "relu"},
    "shared embedding, CE, 32 negatives (the author's default)": {
        "constrained_embedding": True, "loss_type": "CE", "final_activation": "linear", "n_sample": 32},
    "shared embedding, feedforward, input dropout, momentum": {
        "constrained_embedding": True, "ff_hidden_size": 24, "dropout_prob_input": 0.3, "learner": "adagrad_momentum",
        "momentum": 0.3, "n_sample": 8},
    "learned embedding, input dropout, BPR-max, two layers": {
        "embedding_size": 12, "dropout_prob_input": 0.3, "loss_type": "BPR-max", "num_layers": 2, "n_sample": 8},
    "learned embedding, TOP1": {"embedding_size": 12},
    "shared embedding, BPR-max, target copies as negatives (the author's BPR-max)": {
        "constrained_embedding": True, "loss_type": "BPR-max", "n_sample": 16, "remove_accidental_hits": False},
    "TOP1-max, tanh, each step's mean (loss_scale rows)": {"loss_type": "TOP1-max", "final_activation": "tanh",
                                                           "n_sample": 8, "loss_scale": "rows"},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 users with 3-25 events over 30 items: sessions start, end and slots go idle within one short epoch."""
    return random_sessions_folder(tmp_path_factory, "tiny", 7, users=40, items=30, min_length=3, max_length=25)


def train_one_epoch(tiny, fused, prepare=None, **options):
    """A trainer after one epoch of batch-8 steps, and the loss of each step (the fused step in Python unless
    ``cpp_step=True`` is given); ``prepare(model)`` runs before the first step."""
    options.setdefault("cpp_step", False)
    config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, train_batch_size=8, fused_step=fused,
                                   hidden_size=16, **options)
    init_seed(config["seed"], True)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    if prepare is not None:
        with torch.no_grad():
            prepare(trainer.model)
    losses = []
    step = trainer._fused_step() or trainer.session_loss
    assert (trainer._fused_step() is not None) == fused
    torch.manual_seed(3)
    loader = SessionParallelDataLoader(config, train._dataset)
    if isinstance(step, CppTrainingSteps):
        return trainer, [value for chunk in step.train_epoch(loader.next_epoch()) for value in chunk.tolist()]
    for interaction in loader:
        if fused:
            losses.append(step(interaction).item())
        else:
            trainer.optimizer.zero_grad()
            loss = step(interaction)
            loss.backward()
            trainer.optimizer.step()
            losses.append(loss.item())
    return trainer, losses


def assert_same_training(trainer, losses, reference, reference_losses, state_rtol=1e-4):
    """Every step's loss, every parameter, the optimizer's sums and velocities and the carried hidden state agree."""
    assert len(losses) > 40
    assert losses == pytest.approx(reference_losses, rel=1e-4, abs=1e-6)
    params = dict(trainer.model.named_parameters())
    for name, param in reference.model.named_parameters():
        torch.testing.assert_close(params[name], param, rtol=1e-4, atol=1e-5, msg=name)
        for key, value in reference.optimizer.state[param].items():
            torch.testing.assert_close(trainer.optimizer.state[params[name]][key], value, rtol=state_rtol, atol=1e-5)
    torch.testing.assert_close(trainer.session_state.hidden, reference.session_state.hidden, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", SETTINGS.values(), ids=SETTINGS.keys())
def test_fused_step_updates_as_autograd_does(tiny, options):
    assert_same_training(*train_one_epoch(tiny, True, **options), *train_one_epoch(tiny, False, **options))


COMPILED_SETTINGS = {
    "TOP1, two layers, feedforward, dropout, negatives, momentum": {
        "num_layers": 2, "ff_hidden_size": 24, "dropout_prob_input": 0.2, "dropout_prob_hidden": 0.3, "n_sample": 16,
        "learner": "adagrad_momentum", "momentum": 0.4},
    "CE, 32 negatives, logQ": SETTINGS["CE, 32 negatives, logQ"],
}


@pytest.mark.skipif(NO_COMPILER, reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("options", COMPILED_SETTINGS.values(), ids=COMPILED_SETTINGS.keys())
def test_compiled_step_updates_as_the_fused_step_does(tiny, options):
    # The epoch's last steps are narrower than the first: the compiled step recompiles for them.
    compiled = train_one_epoch(tiny, True, compile_step=True, **options)
    assert compiled[0].fused_training_step.arithmetic is not compiled[0].fused_training_step._arithmetic
    assert_same_training(*compiled, *train_one_epoch(tiny, True, **options))


CPP_SETTINGS = {
    **{name: SETTINGS[name] for name in ("paper TOP1", "BPR, input dropout", "TOP1, elu, 16 negatives",
                                         "CE, 32 negatives, logQ")},
    **COMPILED_SETTINGS,
    "BPR, two layers, momentum, 8 negatives": {"loss_type": "BPR", "num_layers": 2, "learner": "adagrad_momentum",
                                               "momentum": 0.3, "n_sample": 8},
    "PyTorch's GRU cell, two layers, dropout": SETTINGS["PyTorch's GRU cell, two layers, dropout"],
    **{name: SETTINGS[name] for name in ("CE, target copies as negatives", "BPR, target copies as negatives",
                                         "CE, each step's mean (loss_scale rows)", "TOP1, each step's mean (loss_scale rows)",
                                         "BPR, leaky-0.1", "TOP1, selu-1.05-1.67", "TOP1, relu")},
    **{name: SETTINGS[name] for name in ("shared embedding, CE, 32 negatives (the author's default)",
                                         "shared embedding, feedforward, input dropout, momentum",
                                         "learned embedding, TOP1")},
    **{name: SETTINGS[name] for name in SETTINGS if "-max" in name},
    "learned embedding, input dropout, two layers, CE": {
        "embedding_size": 12, "dropout_prob_input": 0.3, "num_layers": 2, "loss_type": "CE",
        "final_activation": "linear", "n_sample": 8},
}


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
@pytest.mark.parametrize("options", CPP_SETTINGS.values(), ids=CPP_SETTINGS.keys())
def test_cpp_step_updates_as_the_fused_step_does(tiny, monkeypatch, options):
    # Chunks of 7 steps: the hidden state crosses chunk boundaries, narrower steps among them. Every step split
    # into the two halves that run side by side (these steps are far below SPLIT_WORK).
    monkeypatch.setattr(cpp_step, "CHUNK_STEPS", 7)
    monkeypatch.setattr(cpp_step, "SPLIT_WORK", 0)
    in_cpp = train_one_epoch(tiny, True, cpp_step=True, **options)
    assert isinstance(in_cpp[0].fused_training_step, CppTrainingSteps)
    assert_same_training(*in_cpp, *train_one_epoch(tiny, True, **options))


# 64 negatives on tiny's 30 items: every step's 65-72 columns hold at most 30 items, so more than a third of them
# repeat one and the C++ step takes its products, and its loss but with logQ, once per item (ScoredItems, Negatives).
BY_ITEM_SETTINGS = {
    **{loss: {"loss_type": loss} for loss in ["TOP1", "BPR", "TOP1-max", "BPR-max"]},
    "CE": {"loss_type": "CE", "final_activation": "linear"},
    "CE, target copies as negatives": {"loss_type": "CE", "final_activation": "linear", "remove_accidental_hits": False},
    "TOP1, target copies as negatives": {"remove_accidental_hits": False},
    "BPR-max, shared embedding, target copies as negatives": {
        "loss_type": "BPR-max", "constrained_embedding": True, "remove_accidental_hits": False},
    "CE, logQ (its loss stays per column)": {"loss_type": "CE", "final_activation": "linear", "logq": 1.0},
}


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
@pytest.mark.parametrize("options", BY_ITEM_SETTINGS.values(), ids=BY_ITEM_SETTINGS.keys())
def test_cpp_step_by_item_updates_as_the_fused_step_does_by_column(tiny, monkeypatch, options):
    monkeypatch.setattr(cpp_step, "CHUNK_STEPS", 7)
    in_cpp = train_one_epoch(tiny, True, cpp_step=True, n_sample=64, **options)
    assert isinstance(in_cpp[0].fused_training_step, CppTrainingSteps)
    assert_same_training(*in_cpp, *train_one_epoch(tiny, True, n_sample=64, **options))


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
@pytest.mark.parametrize("loss_type", ["BPR-max", "TOP1-max", "CE", "BPR", "TOP1"])
def test_cpp_step_on_extreme_scores_stays_finite_and_updates_as_the_fused_step_does(tiny, monkeypatch, loss_type):
    """Output biases of +-300 put targets hundreds above or below their negatives, where a sigmoid or a softmax
    computed directly overflows or underflows: both steps stay finite and agree (losses.py's log-domain forms)."""
    monkeypatch.setattr(cpp_step, "CHUNK_STEPS", 7)

    def extreme_biases(model):
        model.output_bias[0::2] = 300.0
        model.output_bias[1::2] = -300.0

    options = {"loss_type": loss_type, "final_activation": "linear", "n_sample": 8, "prepare": extreme_biases}
    trainer, losses = train_one_epoch(tiny, True, cpp_step=True, **options)
    assert isinstance(trainer.fused_training_step, CppTrainingSteps)
    assert all(math.isfinite(value) for value in losses)
    if loss_type not in ("TOP1", "TOP1-max"):  # the two bounded by 2
        assert max(losses) > 100
    # BPR-max's gradient holds bpreg * s_j * (r_j^2 - sum_k s_k r_k^2), two terms near 9e4 here: float32 rounding in
    # a different order moves the Adagrad sums of its squares by up to ~3e-4 relative.
    assert_same_training(trainer, losses, *train_one_epoch(tiny, True, **options), state_rtol=1e-3)


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
@pytest.mark.parametrize("name", ["paper TOP1", "shared embedding, CE, 32 negatives (the author's default)"])
def test_cpp_step_on_one_thread_updates_as_the_fused_step_does_and_gives_the_threads_back(tiny, monkeypatch, name):
    monkeypatch.setattr(cpp_step, "CHUNK_STEPS", 7)
    monkeypatch.setattr(cpp_step, "SPLIT_WORK", 1 << 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_cpp = train_one_epoch(tiny, True, cpp_step=True, **SETTINGS[name])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert_same_training(*in_cpp, *train_one_epoch(tiny, True, **SETTINGS[name]))


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
def test_cpp_step_stops_where_the_fused_step_stops_at_a_non_finite_loss(tiny, monkeypatch):
    monkeypatch.setattr(cpp_step, "CHUNK_STEPS", 7)
    trainers, errors = [], []
    for in_cpp in (True, False):
        config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, train_batch_size=8, hidden_size=16,
                                       cpp_step=in_cpp)
        init_seed(config["seed"], True)
        trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
        steps = SessionParallelDataLoader(config, train._dataset).next_epoch()
        first_scored = {}  # item -> the first step that scores it (without extra negatives: a step's targets)
        for t in range(steps.n_steps):
            for item in steps.targets[steps.bounds[t] : steps.bounds[t + 1]].tolist():
                first_scored.setdefault(item, t)
        late_item = max(first_scored, key=first_scored.get)
        with torch.no_grad():
            trainer.model.output_bias[late_item] = float("nan")
        with pytest.raises(NonFiniteLossError) as error:
            trainer._train_epoch(SessionParallelDataLoader(config, train._dataset), 0)
        trainers.append(trainer)
        errors.append(str(error.value))
    assert first_scored[late_item] > 0 and f"step {first_scored[late_item]};" in errors[0]
    assert errors[0] == errors[1]
    torch.testing.assert_close(trainers[0].model.input_layer.weight, trainers[1].model.input_layer.weight, equal_nan=True)


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
@pytest.mark.parametrize("n_items", [1, 2, 30, 1683, 100_000])
def test_cpp_inverse_cdf_draws_the_items_torch_searchsorted_draws(n_items):
    """The C++ step's search over the sampler's cumulative distribution: zero-weight items (repeated values), draws
    on the guide table's bucket edges, on the cumulative values themselves, at 0, and outside [0, 1)."""
    generator = torch.Generator().manual_seed(n_items)
    weights = torch.rand(n_items, generator=generator, dtype=torch.float64) ** 4
    weights[torch.rand(n_items, generator=generator) < 0.3] = 0.0
    weights[0] = 0.0
    weights[-1] = weights[-1] + 1e-3
    cumulative = weights.cumsum(0) / weights.sum()
    edges = torch.arange(0, 4 * n_items + 1, dtype=torch.float64) / (1 << (2 * n_items - 1).bit_length())
    uniform = torch.cat([torch.rand(50_000, generator=generator, dtype=torch.float64), edges, cumulative,
                         torch.nextafter(cumulative, torch.zeros(())), torch.tensor([0.0, -0.5, 1.0, 1.5])])
    found = cpp_step.load_extension().inverse_cdf(cumulative, uniform)
    torch.testing.assert_close(found, torch.searchsorted(cumulative, uniform, right=True), rtol=0, atol=0)


@pytest.mark.skipif(NO_COMPILER, reason="cpp_step needs a C++ compiler")
def test_cpp_step_leaves_a_loss_it_does_not_cover_to_the_fused_step_and_says_so(tiny, caplog):
    config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, state="INFO", loss_type="CE",
                                   final_activation="tanh", cpp_step=True)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    with caplog.at_level(logging.INFO):
        trainer._train_epoch(SessionParallelDataLoader(config, train._dataset), 0)
    said = [record.getMessage() for record in caplog.records if "not used" in record.getMessage()]
    assert type(trainer.fused_training_step) is FusedTrainingStep
    assert said == ["cpp_step: not used, training with the fused step in Python because of loss_type: CE, "
                    "final_activation: tanh (the C++ step covers CE on linear scores, and TOP1, BPR, TOP1-max and "
                    "BPR-max with any final activation)"]


@pytest.mark.parametrize("options,reason", [
    ({"learner": "adam"}, "learner: adam"),
    ({"clip_grad_norm": {"max_norm": 5}}, "clip_grad_norm"),
    ({"learner": "adam", "compile_step": True}, "learner: adam"),
])
def test_settings_it_does_not_cover_train_with_autograd_and_say_why(tiny, caplog, options, reason):
    config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, state="INFO", **options)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    with caplog.at_level(logging.INFO):
        trainer._train_epoch(SessionParallelDataLoader(config, train._dataset), 0)
        trainer._train_epoch(SessionParallelDataLoader(config, train._dataset), 1)
    said = [record.getMessage() for record in caplog.records if "not used" in record.getMessage()]
    assert len(said) == 1 and reason in said[0]
    assert said[0].startswith("fused_step and compile_step: not used" if options.get("compile_step") else "fused_step: not used")


def test_without_the_cpp_step_the_trainer_trains_every_step_with_the_fused_step(tiny, monkeypatch):
    calls = []
    original = FusedTrainingStep.__call__
    monkeypatch.setattr(FusedTrainingStep, "__call__", lambda self, step: calls.append(1) or original(self, step))
    config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, cpp_step=False)
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    loader = SessionParallelDataLoader(config, train._dataset)
    trainer._train_epoch(loader, 0)
    assert len(calls) == len(loader) > 0


@pytest.mark.parametrize("options,expected,said", [
    ({}, CppTrainingSteps, "training step: the C++ step (cpp_step: auto)"),
    ({"loss_type": "BPR-max"}, CppTrainingSteps, "training step: the C++ step (cpp_step: auto)"),
    ({"loss_type": "TOP1-max"}, CppTrainingSteps, "training step: the C++ step (cpp_step: auto)"),
    ({"loss_type": "CE", "final_activation": "tanh"}, FusedTrainingStep,
     "because of loss_type: CE, final_activation: tanh"),
    ({"compile_step": True}, FusedTrainingStep, "because of compile_step: True"),
    ({"constrained_embedding": True, "loss_type": "CE"}, CppTrainingSteps, "training step: the C++ step (cpp_step: auto)"),
    ({"embedding_size": 8}, CppTrainingSteps, "training step: the C++ step (cpp_step: auto)"),
    ({"learner": "adam"}, type(None), "training with autograd because of learner: adam"),
    ({"no_compiler": True}, FusedTrainingStep, "because of no C++ compiler: 'no-such-compiler-here'"),
])
def test_cpp_step_auto_picks_the_fastest_path_that_can_run_and_says_which(tiny, caplog, monkeypatch, options, expected,
                                                                          said):
    """cpp_step: auto (the default): the C++ step where a compiler is found and the loss is covered, else the fused
    step in Python (compiled if asked), else autograd; one log line says which and why."""
    if expected is CppTrainingSteps and NO_COMPILER:
        pytest.skip("no C++ compiler here")
    if options.pop("no_compiler", False):
        monkeypatch.setenv("CXX", "no-such-compiler-here")
    config, _, train, _, _ = build("GRU4RecPaper", "tiny", data_path=tiny, hidden_size=16, **options)
    assert config["cpp_step"] == "auto"
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    with caplog.at_level(logging.INFO):
        step = trainer._fused_step()
    assert type(step) is expected
    assert any(said in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
