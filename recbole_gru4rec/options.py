"""GRU4RecPaper's options: their defaults (the YAML beside the model) and their validation.

Validation runs before any data is loaded or any training starts, and stops at the first bad value with a
one-line message naming the option, the value and what is allowed. The execution options (how a step is
computed) are checked against the machine by the trainer only: a model loaded to serve or evaluate never
needs the compiler that trained it.
"""

import difflib
import importlib.util
import os
import shutil
import sys

import yaml

from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.losses import LOSS_TYPES
from recbole_gru4rec.session_data import SESSION_ORDERS
from recbole_gru4rec.steps import activations

DEFAULTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "GRU4RecPaper.yaml")
GRU_CELLS = ("paper", "pytorch")
EVAL_HISTORIES = ("window", "full")
LOSS_SCALES = ("batch_size", "rows")
LEARNERS = ("adagrad", "adagrad_momentum", "adam", "adamw", "sgd", "rmsprop")
# Learners whose torch implementation accepts sparse gradients (see sparse_gradients).
SPARSE_LEARNERS = ("adagrad", "adagrad_momentum", "sgd")


class OptionError(UsageError):
    """A configuration value that GRU4RecPaper cannot use."""


def load_defaults():
    """The default value of every GRU4RecPaper option, read from GRU4RecPaper.yaml."""
    with open(DEFAULTS_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


# RecBole's form of ``train_neg_sample_args: ~`` (what its Config makes of it).
NO_RECBOLE_NEGATIVES = {"distribution": "none", "sample_num": "none", "alpha": "none", "dynamic": False, "candidate_num": 0}


def fill_defaults(config):
    """Give ``config`` GRU4RecPaper's default for every option its user did not set.

    RecBole's own defaults (``learner: adam``, ``train_batch_size: 2048``, a uniform training sampler) count
    as not set, as a model's YAML overrides them inside RecBole; so ``Config(model=GRU4RecPaper, ...)`` with
    no config file trains the paper's setting.
    """
    user_set = getattr(config, "external_config_dict", None)  # None: a plain mapping, whose keys are all the user's
    for name, value in load_defaults().items():
        if name not in (config if user_set is None else user_set):
            config[name] = dict(NO_RECBOLE_NEGATIVES) if name == "train_neg_sample_args" else value


def sparse_gradients(config):
    """Item-indexed weights get sparse gradients when the optimizer can use them: only touched rows move."""
    return config["learner"].lower() in SPARSE_LEARNERS and not config["weight_decay"] and not config["clip_grad_norm"]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(minimum):
    return lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}"


def _number_in(low, high=None, high_open=True):
    def check(v):
        if not _is_number(v) or v != v or v < low:
            return False
        return high is None or (v < high if high_open else v <= high)

    allowed = f"a number >= {low}" if high is None else f"a number in [{low}, {high}{')' if high_open else ']'}"
    return check, allowed


def _one_of(choices):
    return lambda v: v in choices, "one of " + ", ".join(choices)


# The version of GRU4RecPaper's mechanisms, recorded in every result so that rows trained by older code are told
# apart (the leaderboard trains them again). 1 (rows without it): PyTorch's GRU cell, eps outside Adagrad's root,
# the undropped state carried, logQ of normalised popularity on every column, final_activation tanh by default.
# 2: the paper's GRU cell and the author's way for the other four (README, Faithfulness). 3: a step's loss summed
# over its rows and divided by the batch size (loss_scale: batch_size), not averaged over its rows; the output
# bias updated at the scored items only (differs from 2 with momentum).
MECHANISMS = 3

# Options that choose how a step is computed, not what: the updates are the same up to float rounding (tested).
# A run resumes across them, and a leaderboard row stands for both; rows record them under "execution".
EXECUTION_OPTIONS = ("fused_step", "compile_step", "cpp_step")


def without_execution_options(config):
    """The items of ``config`` (a mapping) that say what a run computes: all but the :data:`EXECUTION_OPTIONS`."""
    return {key: value for key, value in config.items() if key not in EXECUTION_OPTIONS}


CHECKS = {
    "hidden_size": _int_at_least(1),
    "num_layers": _int_at_least(1),
    "gru_cell": _one_of(GRU_CELLS),
    "embedding_size": _int_at_least(0),
    "constrained_embedding": (lambda v: isinstance(v, bool), "True or False"),
    "ff_hidden_size": _int_at_least(0),
    "dropout_prob_input": _number_in(0.0, 1.0),
    "dropout_prob_hidden": _number_in(0.0, 1.0),
    "final_activation": (lambda v: isinstance(v, str) and bool(activations.PATTERN.match(v)), activations.ALLOWED),
    "loss_type": _one_of(LOSS_TYPES),
    "n_sample": _int_at_least(0),
    "sample_alpha": _number_in(0.0),
    "bpreg": _number_in(0.0),
    "logq": _number_in(0.0),
    "remove_accidental_hits": (lambda v: isinstance(v, bool), "True or False"),
    "loss_scale": _one_of(LOSS_SCALES),
    "session_max_targets": _int_at_least(0),
    "session_order": _one_of(SESSION_ORDERS),
    "eval_history": _one_of(EVAL_HISTORIES),
    "learner": (lambda v: isinstance(v, str) and v.lower() in LEARNERS, "one of " + ", ".join(LEARNERS)),
    "momentum": _number_in(0.0, 1.0),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "train_batch_size": _int_at_least(1),
    "fused_step": (lambda v: isinstance(v, bool), "True or False"),
    "compile_step": (lambda v: isinstance(v, bool), "True or False"),
    "cpp_step": (lambda v: isinstance(v, bool) or v == "auto", "auto, True or False"),
}


def validate(config):
    """Raise :class:`OptionError` at the first GRU4RecPaper option of ``config`` that is out of range.

    The execution options are checked for their type here, and against the machine by :func:`validate_execution`.
    """
    for name, (check, allowed) in CHECKS.items():
        value = config[name]
        if not check(value):
            raise OptionError(f"GRU4RecPaper option {name}={value!r} is not allowed: expected {allowed}")
    if config["embedding_size"] > 0 and config["constrained_embedding"]:
        raise OptionError(
            f"GRU4RecPaper options embedding_size={config['embedding_size']} and constrained_embedding=True "
            "exclude each other: the shared embedding has the size of the output layer; set embedding_size: 0"
        )
    if config["logq"] > 0 and config["loss_type"] != "CE":
        raise OptionError(f"GRU4RecPaper option logq={config['logq']} needs loss_type CE, got {config['loss_type']!r}")
    negatives = config["train_neg_sample_args"]
    if isinstance(negatives, dict) and negatives.get("distribution", "none") != "none":
        raise OptionError(
            f"RecBole option train_neg_sample_args={negatives!r} does not apply to GRU4RecPaper, whose negatives "
            "are the mini-batch's other targets: set train_neg_sample_args: ~ and use n_sample / sample_alpha"
        )
    if config["enable_amp"]:
        raise OptionError("GRU4RecPaper option enable_amp=True is not supported: it trains in float32; set enable_amp: False")
    if config["single_spec"] is False:
        raise OptionError(
            "GRU4RecPaper trains in one process (an epoch is one sequence of session-parallel steps): RecBole's "
            "multi-process run (run_recboles, nproc > 1) is not supported; use run_recbole or run.py"
        )
    weight_decay = config["weight_decay"] or 0.0
    if not _is_number(weight_decay) or weight_decay < 0:
        raise OptionError(f"option weight_decay={weight_decay!r} is not allowed: expected a number >= 0")
    if weight_decay > 0 and config["learner"].lower() == "adagrad_momentum":
        raise OptionError(f"option weight_decay={weight_decay} is not supported by learner adagrad_momentum; use 0")
    if config["momentum"] > 0 and config["learner"].lower() != "adagrad_momentum":
        raise OptionError(
            f"GRU4RecPaper option momentum={config['momentum']} needs learner adagrad_momentum, got {config['learner']!r}"
        )


def validate_execution(config):
    """Raise :class:`OptionError` when an execution option asks for what this machine or setting lacks."""
    if config["compile_step"]:
        _check_compile_step(config)
    if config["cpp_step"] is True:
        reason = cpp_step_unavailable(config)
        if reason is not None:
            raise OptionError(f"GRU4RecPaper option cpp_step=True cannot be used: {reason}; set cpp_step: auto or False")


def _check_compile_step(config):
    if not config["fused_step"]:
        raise OptionError("GRU4RecPaper option compile_step=True compiles the fused step: it needs fused_step: True")
    # torch.compile generates C++ on CPU and Triton kernels on a GPU: without the one it needs, the first step
    # fails after all the data has been loaded.
    if _on_cpu(config):
        _check_compiler("compile_step")
    elif importlib.util.find_spec("triton") is None:
        raise OptionError(
            f"GRU4RecPaper option compile_step=True needs Triton on device {config['device']}: the package 'triton' is "
            "not installed; install it or set compile_step: False"
        )


def cpp_step_unavailable(config):
    """Why the C++ step cannot train here (a phrase naming the option or what is missing), or None when it can.

    ``cpp_step: True`` makes the reason an error before training; ``auto`` trains with the fused step instead.
    """
    if not config["fused_step"]:
        return "fused_step: False (the C++ step is the fused step in C++)"
    if config["compile_step"]:
        return "compile_step: True (the two exclude each other)"
    if not _on_cpu(config):
        return f"device {config['device']} (the C++ step trains on the CPU)"
    if shutil.which(_compiler()) is None:
        return f"no C++ compiler: {_compiler()!r} (set by $CXX) is not on PATH"
    return None


def _on_cpu(config):
    return str(config["device"] or "cpu").startswith("cpu")


def _compiler():
    # Built with $CXX, else g++ (clang++ on macOS), as torch does.
    return os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


def _check_compiler(option):
    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise OptionError(
            f"GRU4RecPaper option {option}=True needs a C++ compiler on CPU: {compiler!r} (set by $CXX) is not on "
            f"PATH; install one or set {option}: False"
        )


def misspelt_options(keys):
    """(key, closest option) for each key that is no known option but looks like a misspelt GRU4RecPaper one."""
    known = set(CHECKS) | set(load_defaults())
    pairs = []
    for key in keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            pairs.append((key, close[0]))
    return pairs
