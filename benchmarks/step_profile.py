"""Where one GRU4RecPaper training step spends its time: the fused step against autograd, and its parts.

Builds GRU4RecPaper on a dataset with the given options, takes real session-parallel steps, then
* times the fused step, the fused step compiled (``compile_step``; needs a C++ compiler) and the autograd step
  (calculate_loss, backward, optimizer.step) on the same steps, alternating them for several rounds (this
  VM's timings drift; alternating shows it);
* times each part of the fused step alone: the loss and its gradient, the row updates of the output and
  input weights, the dense update, the negatives, the carried hidden state;
* times the floor: the step's five matrix products alone, a few elementwise operations on its score matrix,
  and a one-element add (the cost of any operation at all).
Nothing is written; the output is the table, in microseconds a step.

With ``--epochs=N`` it only trains N whole epochs through the trainer, on the path it picks (the C++ step by
default), and prints each epoch's seconds: a target for ``perf record`` without the data loading's share.

With ``--ab=OTHER.cpp --pairs=N`` it compares a changed copy of ``recbole_gru4rec/steps/cpp_step.cpp`` (kept
outside the repository) with the repository's: one trainer alternates whole epochs between the two builds (ABBA
order, after one warm-up epoch each), so both see the same data and the same phase of this VM, whose speed drifts
by up to 2x over minutes. ``--ab_flags="-mavx512f ..."`` adds compiler flags to the other build only; with
``--ab`` left out but ``--ab_flags`` given, the repository's source is built a second time with them.
``--ab=A.cpp,B.cpp`` compares two copies. ``--timers=true`` builds both with ``-DSTEP_TIMERS``, which turns on
the timers in cpp_step.cpp's parts of a step, and prints each part's median milliseconds a step in A and B; with
``--timers=true`` alone, A and B are both the repository's source: a profile of the step, and how much the same
build moves between epochs.

    python benchmarks/step_profile.py --dataset=ml-100k --timers=true --pairs=3 \
        --loss_type=BPR-max --n_sample=2048 --constrained_embedding=True --train_batch_size=64

    python benchmarks/step_profile.py --dataset=ml-100k --ab=/tmp/changed_cpp_step.cpp --pairs=4 \
        --loss_type=BPR-max --n_sample=2048 --constrained_embedding=True --train_batch_size=64

    perf record -F 2000 -o perf.data -- python benchmarks/step_profile.py --dataset=ml-100k --epochs=12

    python benchmarks/step_profile.py --dataset=ml-100k --loss_type=CE --final_activation=linear \
        --train_batch_size=64 --n_sample=512
"""

import hashlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole.data import create_dataset, data_preparation  # noqa: E402

from recbole_gru4rec import GRU4RecPaper, SessionParallelDataLoader, SessionParallelTrainer, pipeline  # noqa: E402
from recbole_gru4rec.cli import split_flags  # noqa: E402
from recbole_gru4rec.steps import cpp  # noqa: E402
from recbole_gru4rec.steps.fused import FusedTrainingStep, loss_and_gradient  # noqa: E402


def microseconds_per_call(function, steps, rounds=1):
    """Mean microseconds of ``function(step)`` over ``steps``, after one warm-up pass over the first 30."""
    for step in steps[:30]:
        function(step)
    start = time.perf_counter()
    for _ in range(rounds):
        for step in steps:
            function(step)
    return 1e6 * (time.perf_counter() - start) / (rounds * len(steps))


def time_epochs(trainer, loader, epochs):
    """Train ``epochs`` whole epochs as the trainer does and print each one's seconds."""
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        trainer._train_epoch(loader, epoch)
        seconds.append(round(time.perf_counter() - start, 3))
    print(f"{type(trainer.fused_training_step).__name__}, {torch.get_num_threads()} threads: seconds an epoch {seconds}")


def build(source, extra_flags):
    """The C++ step's extension compiled from ``source`` with the repository's flags and ``extra_flags``."""
    from torch.utils.cpp_extension import load

    _, flags = cpp.build_flags()
    with open(source, "rb") as file:
        digest = hashlib.sha256(file.read() + " ".join(extra_flags).encode()).hexdigest()[:12]
    return load(name=f"step_profile_{digest}", sources=[source], extra_cflags=flags + extra_flags, verbose=False)


def compare_builds(trainer, loader, builds, pairs):
    """Train ``pairs`` pairs of epochs in ABBA order, each with the C++ step's extension swapped for one of the
    two ``builds`` (name, module), after one warm-up epoch each; print each build's median and fastest epoch."""
    steps = trainer._fused_step()
    if not isinstance(steps, cpp.CppTrainingSteps):
        raise SystemExit(f"--ab compares C++ builds, but this setting trains with {type(steps).__name__}")
    seconds = {name: [] for name, _ in builds}
    timers = {name: [] for name, _ in builds}
    epoch = 0

    def train_with(name, extension):
        nonlocal epoch
        steps.extension = extension
        trainer.model.negatives.use_search(extension.inverse_cdf)
        before = dict(extension.timers()) if hasattr(extension, "timers") else None
        start = time.perf_counter()
        trainer._train_epoch(loader, epoch)
        elapsed = time.perf_counter() - start
        epoch += 1
        if before is not None:
            timers[name].append({part: seconds - before[part] for part, seconds in extension.timers()})
        return elapsed

    for name, extension in builds:
        train_with(name, extension)
    for pair in range(pairs):
        for name, extension in builds if pair % 2 == 0 else builds[::-1]:
            seconds[name].append(train_with(name, extension))
    for name, _ in builds:
        print(f"{name}: median {statistics.median(seconds[name]):.3f} s an epoch, fastest {min(seconds[name]):.3f}, "
              f"all {[round(value, 3) for value in seconds[name]]}")
    (a, _), (b, _) = builds
    print(f"{b} / {a}, median epoch: {statistics.median(seconds[b]) / statistics.median(seconds[a]):.3f}")
    if all(timers.values()):
        n_steps = len(loader)
        print(f"median ms a step ({n_steps} steps an epoch; the halves' parts overlap in time):")
        print(f"  {'part':<34} {a:>8} {b:>8}")
        for part in timers[a][0]:
            medians = [1e3 * statistics.median(epoch[part] for epoch in timers[name]) / n_steps for name, _ in builds]
            print(f"  {part:<34} {medians[0]:8.3f} {medians[1]:8.3f}")


def ab_sources(flags):
    """The two C++ sources ``--ab`` / ``--ab_flags`` compare (A, B), or None without them; a bad value is a
    one-line error before anything is built or loaded."""
    if flags["timers"] not in ("true", "false"):
        raise SystemExit(f"--timers={flags['timers']}: expected true or false")
    if not (flags["ab"] or flags["ab_flags"] or flags["timers"] == "true"):
        return None
    if not flags["pairs"].isdigit() or int(flags["pairs"]) < 1:
        raise SystemExit(f"--pairs={flags['pairs']}: expected a whole number >= 1 (pairs of epochs, A then B)")
    sources = flags["ab"].split(",") if flags["ab"] else [cpp.SOURCE]
    if len(sources) == 1:
        sources.insert(0, cpp.SOURCE)
    if len(sources) != 2 or not all(os.path.isfile(source) for source in sources):
        raise SystemExit(f"--ab={flags['ab']}: expected one or two existing C++ files (changed copies of "
                         f"{cpp.SOURCE}), separated by a comma")
    return sources


def main():
    """Time the step as asked (autograd against fused, two C++ builds, or the timed parts) and print it."""
    flags, options = split_flags(sys.argv[1:], {"dataset": "ml-100k", "steps": "500", "rounds": "3", "epochs": "0",
                                                "ab": "", "ab_flags": "", "pairs": "4", "timers": "false"})
    dataset, n_steps, rounds = flags["dataset"], int(flags["steps"]), int(flags["rounds"])
    sources = ab_sources(flags)
    overrides = {"state": "ERROR", "show_progress": False, **options}
    config = pipeline.build_config("GRU4RecPaper", dataset, overrides=overrides)
    train, _, _ = data_preparation(config, create_dataset(config))
    trainer = SessionParallelTrainer(config, GRU4RecPaper(config, train._dataset))
    if int(flags["epochs"]) > 0:
        time_epochs(trainer, SessionParallelDataLoader(config, train._dataset), int(flags["epochs"]))
        return
    if sources:
        timer_flags = ["-DSTEP_TIMERS"] if flags["timers"] == "true" else []
        builds = [("A", build(sources[0], timer_flags)), ("B", build(sources[1], timer_flags + flags["ab_flags"].split()))]
        print(f"A: {sources[0]} {' '.join(timer_flags)}; B: {sources[1]} {' '.join(timer_flags)} {flags['ab_flags']}")
        compare_builds(trainer, SessionParallelDataLoader(config, train._dataset), builds, int(flags["pairs"]))
        return
    fused, model, optimizer = trainer._fused_step(), trainer.model, trainer.optimizer
    if fused is None:
        raise SystemExit(f"the fused step does not cover this setting: {trainer.unfused_reason}")
    model.train()
    steps = list(SessionParallelDataLoader(config, train._dataset))[100 : 100 + n_steps]

    def autograd_step(step):
        optimizer.zero_grad()
        loss = trainer.session_loss(step)
        loss.backward()
        optimizer.step()

    print(f"{dataset}, {len(steps)} steps, options {options}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    compiled = FusedTrainingStep(model, optimizer, trainer.session_state, compiled=True)
    start = time.perf_counter()
    compiled(steps[0])
    print(f"compiling the fused step: {time.perf_counter() - start:.1f} s")
    for round_ in range(rounds):
        print(f"round {round_}: fused {microseconds_per_call(fused, steps):7.0f} us/step, "
              f"compiled {microseconds_per_call(compiled, steps):7.0f} us/step, "
              f"autograd {microseconds_per_call(autograd_step, steps):7.0f} us/step")

    targets = steps[0][model.POS_ITEM_ID]
    columns = model.negatives.columns(targets)
    logits = torch.randn(len(targets), len(columns))
    output_grads = torch.randn(len(columns), model.output_size) * 1e-3
    input_grads = torch.randn(len(targets), 3 * model.hidden_size) * 1e-3
    dense_grads = [torch.randn_like(p) * 1e-3 for p in fused.dense_params]
    parts = {
        "loss and its gradient": lambda s: loss_and_gradient(model, logits, columns, targets),
        "update_rows, output weights": lambda s: optimizer.update_rows(fused.output_weights, columns, output_grads),
        "update_rows, input weights": lambda s: optimizer.update_rows(fused.input_weights, targets, input_grads),
        "update_dense": lambda s: optimizer.update_dense(fused.dense_params, dense_grads),
        "negatives (negatives.columns)": lambda s: model.negatives.columns(s[model.POS_ITEM_ID]),
        "carried hidden state": trainer.session_state.carried,
    }
    for name, part in parts.items():
        print(f"  {name:<30} {microseconds_per_call(part, steps):7.0f} us/step")

    batch, hidden = len(targets), torch.randn(len(targets), model.hidden_size)
    column_weights = torch.randn(len(columns), model.output_size)
    hidden_weights = torch.randn(3 * model.hidden_size, model.hidden_size)
    gate_grads = torch.randn(batch, 3 * model.hidden_size)
    one = torch.ones(1)
    floor = {
        f"scores {batch}x{model.output_size} @ {model.output_size}x{len(columns)}": lambda s: hidden @ column_weights.t(),
        "gradient of the outputs": lambda s: logits @ column_weights,
        "gradient of the output rows": lambda s: logits.t() @ hidden,
        f"GRU gates {batch}x{model.hidden_size} @ {model.hidden_size}x{3 * model.hidden_size}": lambda s: hidden @ hidden_weights.t(),
        "gradient of W_hh": lambda s: gate_grads.t() @ hidden,
        "exp of the scores": lambda s: logits.exp(),
        "log_softmax of the scores": lambda s: torch.log_softmax(logits, 1),
        "a one-element add": lambda s: one + 1,
    }
    print("floor:")
    for name, operation in floor.items():
        print(f"  {name:<30} {microseconds_per_call(operation, steps, rounds=4):7.1f} us")


if __name__ == "__main__":
    main()
