"""``cpp_step: True``: the fused step's arithmetic (:mod:`.fused`) in C++ (cpp_step.cpp), a chunk of steps per call.

The C++ source is compiled with torch's extension builder the first time it is used (about 40 s here; then
cached under ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). It trains on the CPU, and
covers what the fused step writes out: TOP1, BPR, TOP1-max and BPR-max with any final activation, and
cross-entropy on linear scores (with logQ), with any input (1-of-N, an embedding, the shared embedding);
cross-entropy on other scores trains with the fused step, which says so once.
"""

import os
import platform
import shutil
import sys

import torch

from recbole_gru4rec.steps import activations
from recbole_gru4rec.steps.fused import FusedTrainingStep

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp_step.cpp")
LOSS_CODES = {"CE": 0, "TOP1": 1, "BPR": 2, "TOP1-max": 3, "BPR-max": 4}  # cpp_step.cpp: Loss
CHUNK_STEPS = 256  # steps per C++ call: short enough that Ctrl-C and the loss check answer within a second
# A chunk whose steps' score product (rows x columns x hidden) has fewer multiply-adds runs on one thread. Measured
# on 2 cores (ml-100k): the paper's setting (50 x 50 x 100) trained 1.25-1.34 s an epoch on one thread and
# 1.50-1.72 s on two; CE with 512 negatives (64 x 576 x 100) 2.09-2.34 s on one and 1.80-2.09 s on two.
SPLIT_WORK = 1 << 20
_extension = None


def build_flags():
    """(extension name, compiler flags): the loops vectorise for the instruction set torch itself uses here, and
    the name carries it, so a cache shared by different machines keeps one build for each."""
    capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512", "DEFAULT"
    # -fno-math-errno lets sqrt vectorise; -fno-trapping-math lets a loop compute a value it then selects
    # away (x ? a - b : -inf), which it would otherwise leave scalar; nothing here reads the FP exception flags. -fopenmp makes at::parallel_for parallel (and the simd pragmas
    # count); nothing links an OpenMP library, so its calls go to the one torch has loaded. Apple's clang
    # has no OpenMP: there the two halves of a step run one after the other.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"] + (["-fopenmp"] if sys.platform != "darwin" else [])
    if capability in ("AVX2", "AVX512") and platform.machine().lower() in ("x86_64", "amd64"):
        flags += ["-mavx2", "-mfma"]
    return f"recbole_gru4rec_cpp_step_{capability.lower()}", flags


def load_extension():
    """The compiled C++ module (built on first use, then taken from torch's extension cache)."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        if shutil.which("ninja") is None:  # torch builds with ninja; the pip package's binary may be off PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        name, flags = build_flags()
        _extension = load(name=name, sources=[SOURCE], extra_cflags=flags, verbose=False)
    return _extension


def uncovered_reason(model):
    """Why the C++ step cannot train this model's loss (a phrase naming the options), or None when it can."""
    if model.loss_type != "CE" or model.activation_name == "linear":
        return None
    return (f"loss_type: CE, final_activation: {model.activation_name} (the C++ step covers CE on linear scores, "
            "and TOP1, BPR, TOP1-max and BPR-max with any final activation)")


class CppTrainingSteps:
    """Trains ``model`` (a :class:`GRU4RecPaper`) on whole epochs of session-parallel steps in C++.

    Uses the parameters, optimizer state and draw order of :class:`FusedTrainingStep`, so the two make the same
    updates up to float rounding.
    """

    def __init__(self, model, optimizer, state):
        self.model, self.optimizer, self.state = model, optimizer, state
        self.fused = FusedTrainingStep(model, optimizer, state)
        self.extension = load_extension()
        kind, self.alpha, self.scale = activations.parse(model.activation_name)
        self.activation = activations.CPP_CODES[kind]
        # cpp_step.cpp's Input: the 1-of-N input, a learned embedding, or the output weights as the embedding.
        self.input_code = 2 if self.fused.shared else 1 if self.fused.embedded else 0
        # torch's searchsorted took ~9 % of a CE + 2048 shared epoch here (0.25 s); the extension's gives the same draws.
        model.negatives.use_search(self.extension.inverse_cdf)

    def _row_tensors(self, weight):
        sums, velocity = self.optimizer.accumulators(weight)
        return [weight.data, sums] + ([velocity] if velocity is not None else [])

    @torch.no_grad()
    def train_epoch(self, steps):
        """Train on every step of ``steps`` (a :class:`SessionParallelEpoch`); yields each chunk's step losses
        (a float64 tensor). After a non-finite loss the chunk ends there, and nothing more is trained."""
        model, optimizer = self.model, self.optimizer
        dense = [param.data for param in self.fused.dense_params]
        sums, velocities = zip(*(optimizer.accumulators(param) for param in self.fused.dense_params))
        velocities = [] if velocities[0] is None else list(velocities)
        input_rows, output_rows = self._row_tensors(self.fused.input_weights), self._row_tensors(self.fused.output_weights)
        bias_rows = [tensor.view(-1, 1) for tensor in self._row_tensors(self.fused.output_bias)]  # one-column rows
        group = optimizer.param_groups[0]
        log_popularity = model.log_popularity if model.logq > 0 else None
        previous_rows = steps.previous_rows()
        hidden = self.state.start_of_epoch(steps.bounds[1]) if steps.n_steps else self.state.hidden
        for first in range(0, steps.n_steps, CHUNK_STEPS):
            last = min(first + CHUNK_STEPS, steps.n_steps)
            a, b = steps.bounds[first], steps.bounds[last]
            negatives = None
            if model.n_sample > 0:
                negatives = torch.stack([model.negatives.next(steps.items.device) for _ in range(last - first)])
            losses, hidden = self.extension.train_steps(
                dense, list(sums), velocities, input_rows, output_rows, bias_rows, self.input_code,
                len(self.fused.hidden_layers),
                self.fused.feedforward is not None, model.reset_before, LOSS_CODES[model.loss_type],
                model.remove_accidental_hits, model.loss_divisor or 0, float(model.bpreg), self.activation,
                self.alpha, self.scale,
                float(model.logq), float(model.sample_alpha), log_popularity, float(model.dropout_input),
                float(model.dropout_hidden),
                float(group["lr"]), float(group["momentum"]), float(group["eps"]),
                steps.items[a:b], steps.targets[a:b], steps.carry[a:b], previous_rows[a:b],
                [bound - a for bound in steps.bounds[first : last + 1]], negatives, hidden, SPLIT_WORK,
            )
            self.state.hidden = hidden
            yield losses
            if len(losses) < last - first:
                return
