"""Runs that die lose nothing, one seed gives one result, and bad numbers or options stop a run in one line."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, random_sessions_folder, wait_for_epoch
from recbole_gru4rec import compat, options, pipeline
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.run_control import NonFiniteLossError, RunControl, TrainingInterrupted

# GRU4RecPaper with every random stream in use: dropout, shuffled sessions, sampled negatives.
RANDOM_PAPER = {"n_sample": 16, "dropout_prob_hidden": 0.3, "session_order": "shuffle"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """60 users with 10-30 events over 40 items: a few hundred training steps per epoch."""
    return random_sessions_folder(tmp_path_factory, "small", 1, users=60, items=40, min_length=10, max_length=30)


def settings(small, tmp_path, **extra):
    return {"data_path": small, "checkpoint_dir": str(tmp_path), "state": "ERROR", "epochs": 5, "stopping_step": 100,
            "show_progress": False, **extra}


def run(model, small, tmp_path, saved=False, **extra):
    return pipeline.run(model, "small", overrides=settings(small, tmp_path, **extra), saved=saved)


def interrupt_at(monkeypatch, epoch, step):
    """Make the next run raise KeyboardInterrupt mid-epoch, as Ctrl-C would."""
    check = RunControl._check_finite

    def interrupting(self, value):
        if self.epoch_in_progress == epoch and self.epoch_step == step:
            raise KeyboardInterrupt
        check(self, value)

    monkeypatch.setattr(RunControl, "_check_finite", interrupting)


# RecBole's GRU4Rec takes this training split in one batch of 2048: its epoch is one step.
@pytest.mark.parametrize("model,extra,step", [("GRU4RecPaper", RANDOM_PAPER, 3), ("GRU4Rec", {}, 0)])
def test_interrupted_run_resumes_to_the_uninterrupted_result(model, extra, step, small, tmp_path, monkeypatch):
    whole = run(model, small, tmp_path / "whole", saved=True, **extra)
    with monkeypatch.context() as patch:
        interrupt_at(patch, epoch=2, step=step)
        with pytest.raises(TrainingInterrupted) as stopped:
            run(model, small, tmp_path / "cut", saved=True, **extra)
    assert stopped.value.epoch == 2 and torch.load(stopped.value.checkpoint, weights_only=True)["epoch"] == 1
    # resumed from another folder (a restored copy, another machine's mount): it carries on there
    (tmp_path / "cut").rename(tmp_path / "moved")
    last = str(tmp_path / "moved" / os.path.basename(stopped.value.checkpoint))
    resumed = pipeline.run(model, "small", overrides=settings(small, tmp_path / "moved", **extra), resume=last)
    assert resumed["test_result"] == whole["test_result"] and not (tmp_path / "cut").exists()
    assert os.path.dirname(resumed["checkpoint"]) == str(tmp_path / "moved")
    assert resumed["train_loss_per_epoch"] == whole["train_loss_per_epoch"] and resumed["epochs"] == whole["epochs"] == 5


def default_ctrl_c():
    """In the child: Ctrl-C raises KeyboardInterrupt, also when the suite runs as a background job, whose
    children inherit SIGINT as ignored (Python then never installs its handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_py(args, **kwargs):
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_ctrl_c, **kwargs)


def cli_args(small, folder, result_file, epochs):
    return ["--dataset=small", f"--data_path={small}", f"--checkpoint_dir={folder}", f"--epochs={epochs}",
            "--stopping_step=100", f"--result_file={result_file}", "--state=ERROR",
            *(f"--{key}={value}" for key, value in RANDOM_PAPER.items())]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(small, tmp_path):
    epochs = 12
    whole = run_py(cli_args(small, tmp_path / "whole", tmp_path / "whole.json", epochs))
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-2000:]
    args = cli_args(small, tmp_path / "cut", tmp_path / "cut.json", epochs)
    killed = run_py(args)
    checkpoint = wait_for_epoch(tmp_path / "cut", 1, killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    resumed = run_py([*args, f"--resume={checkpoint}"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    expected, got = json.loads((tmp_path / "whole.json").read_text()), json.loads((tmp_path / "cut.json").read_text())
    assert got["test_result"] == expected["test_result"] and got["epochs"] == expected["epochs"] == epochs


def test_ctrl_c_keeps_a_checkpoint_and_prints_how_to_resume(small, tmp_path):
    process = run_py(cli_args(small, tmp_path, tmp_path / "r.json", 50))
    checkpoint = wait_for_epoch(tmp_path, 0, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[-2].startswith("run.py: interrupted in epoch ") and checkpoint in lines[-2] and "Traceback" not in err
    assert lines[-1].startswith("resume with: python run.py --dataset=small") and lines[-1].endswith(f"--resume={checkpoint}")
    assert compat.load_checkpoint(checkpoint, kind="last")["epoch"] >= 0


@pytest.mark.parametrize("model,extra", [("GRU4RecPaper", RANDOM_PAPER), ("GRU4Rec", {}), ("SASRec", {})])
def test_same_seed_same_metrics_other_seed_other_metrics(model, extra, small, tmp_path):
    first = run(model, small, tmp_path, epochs=2, **extra)
    again = run(model, small, tmp_path, epochs=2, **extra)
    other = run(model, small, tmp_path, epochs=2, seed=7, **extra)
    assert first["test_result"] == again["test_result"] and first["train_loss_per_epoch"] == again["train_loss_per_epoch"]
    assert first["train_loss_per_epoch"] != other["train_loss_per_epoch"]


def test_baseline_stops_at_the_first_non_finite_loss_and_keeps_its_checkpoint(small, tmp_path, monkeypatch):
    from recbole.model.sequential_recommender.gru4rec import GRU4Rec

    calls = []
    original = GRU4Rec.calculate_loss

    def going_bad(self, interaction):
        calls.append(1)
        loss = original(self, interaction)
        return loss * float("inf") if len(calls) == 4 else loss

    monkeypatch.setattr(GRU4Rec, "calculate_loss", going_bad)
    with pytest.raises(NonFiniteLossError, match=r"training loss is inf at epoch 0, step 3; .* checkpoint is (.*-last\.pth)") as error:
        run("GRU4Rec", small, tmp_path, saved=True, train_batch_size=64)  # several steps an epoch
    last = str(error.value).rsplit(" ", 1)[-1]
    assert compat.load_checkpoint(last, kind="last")["epoch"] == -1  # the state before any step: still good


def test_time_budget_stops_after_the_epoch_that_passes_it(small, tmp_path):
    result = pipeline.run("GRU4RecPaper", "small", overrides=settings(small, tmp_path), saved=False, time_budget_min=1e-6)
    assert result["epochs"] == 1 and result["stopped_by"] == "time_budget"
    assert run("GRU4RecPaper", small, tmp_path, epochs=2)["stopped_by"] == "max_epochs"
    with pytest.raises(UsageError, match="time_budget_min=0 must be a positive number of minutes"):
        pipeline.run("GRU4RecPaper", "small", overrides=settings(small, tmp_path), time_budget_min=0)


def test_resume_refuses_another_config_and_a_best_checkpoint(small, tmp_path):
    result = run("GRU4RecPaper", small, tmp_path, saved=True, epochs=1)
    overrides = settings(small, tmp_path, epochs=1)
    with pytest.raises(UsageError, match=r"the checkpoint was trained with learning_rate=0.01, this command gives 0.5"):
        pipeline.run("GRU4RecPaper", "small", overrides=dict(overrides, learning_rate=0.5), resume=result["last_checkpoint"])
    with pytest.raises(UsageError, match="is a best checkpoint; this needs a last one"):
        pipeline.run("GRU4RecPaper", "small", overrides=overrides, resume=result["checkpoint"])
    # fused_step / compile_step change how a step is computed, not the run: resuming across them is allowed
    pipeline.check_resume(pipeline.build_config("GRU4RecPaper", "small", overrides=dict(overrides, fused_step=False)),
                          result["last_checkpoint"])
    # so does the folder the checkpoints are written to (moved, or named by another path)
    moved = dict(overrides, checkpoint_dir=str(tmp_path / "elsewhere"))
    assert pipeline.check_resume(pipeline.build_config("GRU4RecPaper", "small", overrides=moved),
                                 result["last_checkpoint"])["epoch"] == 0
    # a last checkpoint copied without the best model's checkpoint beside it cannot finish the run (its test)
    os.remove(result["checkpoint"])
    with pytest.raises(UsageError, match=r"--resume=.*-last\.pth: the best model's checkpoint .* is not beside it"):
        pipeline.run("GRU4RecPaper", "small", overrides=overrides, resume=result["last_checkpoint"])


def test_a_kill_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pth")
    compat.write_checkpoint({"format": compat.CHECKPOINT_FORMAT, "epoch": 1}, path)

    def dies_half_way(state, file):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        compat.write_checkpoint({"format": compat.CHECKPOINT_FORMAT, "epoch": 2}, path)
    monkeypatch.undo()
    assert compat.load_checkpoint(path)["epoch"] == 1
    with pytest.raises(UsageError, match="cannot be read as a checkpoint of this tool"):
        compat.load_checkpoint(path + ".partial")


def test_compile_step_needs_the_fused_step_and_a_code_generator(monkeypatch):
    config = dict(options.load_defaults(), enable_amp=False, single_spec=True, weight_decay=0.0, device="cpu",
                  compile_step=True)
    with pytest.raises(options.OptionError, match="needs fused_step: True"):
        options.validate_execution(dict(config, fused_step=False))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(options.OptionError, match=r"'no-such-compiler-here' \(set by \$CXX\) is not on PATH"):
        options.validate_execution(config)
    # On a GPU no C++ compiler is asked for, but Triton is (installed or not, as this test pretends).
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: object())
    options.validate_execution(dict(config, device="cuda"))
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(options.OptionError, match=r"needs Triton on device cuda: the package 'triton' is not installed"):
        options.validate_execution(dict(config, device="cuda"))


def test_cpp_step_needs_the_fused_step_the_cpu_and_a_compiler(monkeypatch):
    config = dict(options.load_defaults(), enable_amp=False, single_spec=True, weight_decay=0.0, device="cpu",
                  cpp_step=True)
    with pytest.raises(options.OptionError, match=r"cpp_step=True cannot be used: fused_step: False"):
        options.validate_execution(dict(config, fused_step=False))
    with pytest.raises(options.OptionError, match="cpp_step=True cannot be used: compile_step: True"):
        options.validate_execution(dict(config, compile_step=True))
    with pytest.raises(options.OptionError, match="cpp_step=True cannot be used: device cuda"):
        options.validate_execution(dict(config, device="cuda"))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(options.OptionError, match=r"cpp_step=True cannot be used: no C\+\+ compiler: 'no-such-compiler-here'"):
        options.validate_execution(config)


def documented_ranges():
    """option -> its range as GRU4RecPaper.yaml's comment documents it, e.g. ``(int >= 1)`` or ``(str) a | b``."""
    ranges = {}
    with open(options.DEFAULTS_FILE, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"^(\w+):[^#]*#\s*\(([^)]*\)?)\)\s*(.*)$", line)
            if match:
                ranges[match.group(1)] = (match.group(2), match.group(3))
    return ranges


def cases_from_the_documented_range(kind, rest):
    """(values that must pass, values that must fail), read off the YAML comment alone (not the code)."""
    if kind.startswith("int >= "):
        low = int(kind.rsplit(" ", 1)[1])
        return [low, low + 7], [low - 1, float(low), "1", True]
    if kind.startswith("float in ["):
        low, high = (float(v) for v in kind[len("float in ["):-1].split(", "))
        return [low, (low + high) / 2], [high, low - 0.01, float("nan"), "0.1"]
    if kind.startswith("float >= "):
        low = float(kind.rsplit(" ", 1)[1])
        return [low, low + 2.5], [low - 0.01, float("nan"), None]
    if kind == "float > 0":
        return [1e-9, 3], [0, -0.5, "0.1"]
    if kind == "bool":
        return [True, False], [1, "True", None]
    if kind == "auto | bool":
        return [True, False, "auto"], [1, "True", "Auto", None]
    if kind == "str":  # "a | b: what b does | elu-<alpha>, ..." lists the choices
        choices = [part.split()[0].rstrip(":,.") for part in rest.split("|")]
        good = [re.sub(r"<[a-z]+>", "0.5", choice) for choice in choices]
        numbered = ["elu-", "elu--1", "leaky-x", "selu-1", "selu-1-2-3"] if "elu-<alpha>" in choices else []
        return good, ["nope", choices[0] + " ", None] + numbered
    raise AssertionError(f"no cases for the documented range {kind!r}")


@pytest.mark.parametrize("option", sorted(options.CHECKS))
def test_every_option_is_checked_for_type_and_range(option):
    """Each option accepts the ends of its range as GRU4RecPaper.yaml documents it, and refuses a value just
    outside it, or of a wrong type, in one line naming the option and the value."""
    good, bad = cases_from_the_documented_range(*documented_ranges()[option])
    # A base every accepted value can stand in: CE (logq needs it), adagrad_momentum (momentum needs it).
    base = dict(options.load_defaults(), enable_amp=False, single_spec=True, weight_decay=0.0, loss_type="CE",
                learner="adagrad_momentum")
    for value in good:
        options.validate(dict(base, **{option: value}))
    for value in bad:
        with pytest.raises(options.OptionError) as refused:
            options.validate(dict(base, **{option: value}))
        message = str(refused.value)
        assert f"{option}={value!r} is not allowed: expected " in message and "\n" not in message


def test_every_default_has_a_check_and_recbole_negative_sampling_is_refused():
    assert set(options.load_defaults()) - set(options.CHECKS) == {"train_neg_sample_args"}
    config = dict(options.load_defaults(), enable_amp=False, single_spec=True, weight_decay=0.0,
                  train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    with pytest.raises(options.OptionError, match="train_neg_sample_args=.* does not apply to GRU4RecPaper"):
        options.validate(config)
