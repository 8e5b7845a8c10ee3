"""``run.py hyper``: RecBole's params files searched by HyperTuning or by Ray Tune on a local Ray cluster."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, random_sessions, sessions_dataset_rows, write_inter
from recbole_gru4rec import hyper, pipeline
from recbole_gru4rec.cli import main
from recbole_gru4rec.quick_start import objective_function

QUIET = ["--epochs=1", "--state=ERROR"]


def search(tmp_path, space, *args):
    """``run.py hyper`` in this process with ``space`` as the params file; returns (exit code, output dir)."""
    params = tmp_path / "space.hyper"
    params.write_text(space)
    output = tmp_path / "out"
    code = main(["hyper", f"--params_file={params}", f"--output_dir={output}", f"--checkpoint_dir={tmp_path / 'saved'}",
                 *QUIET, *args])
    return code, output


def trials(output):
    with open(output / "trials.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("space,message", [
    ("learning_rate normal 0,1\n", "line 1: 'learning_rate normal 0,1' is not 'NAME KIND VALUES'"),
    ("n_sample choice 512\n", "n_sample choice '512': expected a list such as [1, 2]"),
    ("# a comment\nlearning_rate uniform 0.5,0.1\n", "line 2: learning_rate uniform needs LOW < HIGH, got 0.5 and 0.1"),
    ("train_batch_size quniform 32,256\n", "train_batch_size quniform '32,256': expected LOW,HIGH,Q"),
    ("\n", "holds no parameter"),
    ("hiden_size choice [64,100]\n", "hiden_size is no GRU4RecPaper or RecBole option: did you mean 'hidden_size'?"),
    ("hidden_size choice [0,100]\n", "hidden_size=0 is not allowed: expected an integer >= 1"),
    ("dropout_prob_hidden uniform 0.5,1.5\n", "dropout_prob_hidden=1.5 is not allowed: expected a number in [0.0, 1.0)"),
    ("learning_rate uniform 0.01,0.1\n", "--algo=exhaustive needs 'choice' for every parameter"),
])
def test_a_bad_params_file_is_one_line_before_any_trial(space, message, tmp_path, capsys):
    code, output = search(tmp_path, space)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("run.py hyper: error: ") and message in err[-1]
    assert not (output / "trials.jsonl").exists()


@pytest.mark.parametrize("args,message", [
    (["--tool=optuna"], "--tool=optuna: use one of hyperopt, ray"),
    (["--algo=grid"], "--algo=grid: use one of exhaustive, random, bayes"),
    (["--max_evals=0"], "--max_evals=0: use an integer >= 1"),
    (["--max_evals=two"], "--max_evals=two: use an integer"),
    (["--epochs=0"], "epochs=0 is not allowed"),
])
def test_bad_search_flags_are_one_line(args, message, tmp_path, capsys):
    code, _ = search(tmp_path, "learning_rate choice [0.01]\n", *args)
    assert code == 2 and message in capsys.readouterr().err


def test_ranges_give_what_the_options_take():
    assert hyper.Param("train_batch_size", "quniform", (32.0, 256.0, 32.0)).cast(64.0) == 64
    assert type(hyper.Param("train_batch_size", "quniform", (32.0, 256.0, 32.0)).cast(64.0)) is int
    assert hyper.Param("bpreg", "quniform", (0.0, 1.0, 0.25)).cast(0.5) == 0.5  # Q not whole: stays a float
    low, high = hyper.Param("learning_rate", "loguniform", (math.log(0.001), math.log(0.1))).extremes()
    assert low == pytest.approx(0.001) and high == pytest.approx(0.1)
    assert hyper.Param("n_sample", "choice", [0, 512]).extremes() == [0, 512]


def test_committed_params_file_is_valid():
    params = hyper.read_params_file(os.path.join(REPO, "configs", "GRU4RecPaper.hyper"))
    hyper.check_space("GRU4RecPaper", params)
    names = {param.name for param in params}
    assert {"loss_type", "final_activation", "n_sample", "sample_alpha", "dropout_prob_hidden", "learning_rate",
            "momentum", "train_batch_size", "bpreg", "constrained_embedding", "embedding_size"} <= names


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hyper")
    return write_inter(folder, "tiny", sessions_dataset_rows(random_sessions(5, users=40, items=30, min_length=8, max_length=20)))


def test_a_refused_combination_scores_worst_and_the_search_goes_on(tiny, tmp_path):
    space = "constrained_embedding choice [True]\nembedding_size choice [0,16]\n"
    code, output = search(tmp_path, space, "--dataset=tiny", f"--data_path={tiny}")
    assert code == 0
    by_size = {trial["params"]["embedding_size"]: trial for trial in trials(output)}
    assert "exclude each other" in by_size[16]["refused"] and by_size[16]["best_valid_score"] == float("-inf")
    best = json.loads((output / "best.json").read_text())
    assert best["best_params"] == {"constrained_embedding": True, "embedding_size": 0} and best["refused"] == 1


def test_finished_trials_survive_a_killed_search(tiny, tmp_path, monkeypatch):
    calls = []

    def dies_in_the_second_trial(config_dict, config_file_list):
        calls.append(config_dict)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return objective_function(config_dict, config_file_list)

    monkeypatch.setattr(hyper, "objective_function", dies_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, "learning_rate choice [0.01,0.05]\n", "--dataset=tiny", f"--data_path={tiny}")
    (trial,) = trials(tmp_path / "out")
    assert trial["trial"] == 1 and trial["best_valid_score"] > 0


def test_hyperopt_search_on_ml100k_matches_single_runs(tmp_path):
    code, output = search(tmp_path, "learning_rate choice [0.01,0.05]\n")
    assert code == 0
    results = {trial["params"]["learning_rate"]: trial for trial in trials(output)}
    assert sorted(results) == [0.01, 0.05]
    run = pipeline.run("GRU4RecPaper", "ml-100k", overrides={"epochs": 1, "state": "ERROR", "learning_rate": 0.05,
                                                              "checkpoint_dir": str(tmp_path / "single")})
    assert results[0.05]["test_result"] == run["test_result"]
    best = json.loads((output / "best.json").read_text())
    winner = max(results.values(), key=lambda trial: trial["best_valid_score"])
    assert best["best_params"] == winner["params"] and best["test_result"] == winner["test_result"]


def test_ray_search_on_a_ray_cluster_matches_hyperopt(tmp_path, ray_cluster):
    params = tmp_path / "space.hyper"
    params.write_text("learning_rate choice [0.01,0.05]\n")
    runs = {}
    for tool, extra in (("ray", ["--ray_address=auto", "--cpus_per_trial=1"]), ("hyperopt", [])):
        output = tmp_path / tool
        process = subprocess.run(
            [sys.executable, os.path.join(REPO, "run.py"), "hyper", f"--tool={tool}", f"--params_file={params}",
             f"--output_dir={output}", f"--checkpoint_dir={tmp_path / 'saved'}", *QUIET, *extra],
            capture_output=True, text=True, env=ray_cluster, timeout=600,
        )
        assert process.returncode == 0, process.stderr[-2000:]
        runs[tool] = {trial["params"]["learning_rate"]: trial for trial in trials(output)}
    assert sorted(runs["ray"]) == [0.01, 0.05]
    for learning_rate, trial in runs["ray"].items():
        assert trial["test_result"] == runs["hyperopt"][learning_rate]["test_result"]
        assert trial["best_valid_score"] == runs["hyperopt"][learning_rate]["best_valid_score"]


def test_each_trial_keeps_its_checkpoints_in_a_folder_of_its_own(monkeypatch):
    """Two trials started in the same second (Ray runs them side by side) must not write the same file."""
    folders = []
    monkeypatch.setattr(hyper, "objective_function", lambda config, files: folders.append(config["checkpoint_dir"]) or {})
    params = [hyper.Param("learning_rate", "choice", [0.01])]
    for _ in range(2):
        hyper.run_trial({"model": "GRU4RecPaper", "checkpoint_dir": "/x/saved"}, [], params, {"learning_rate": 0.01})
    assert len(set(folders)) == 2 and all(folder.startswith("/x/saved/trial-") for folder in folders)
