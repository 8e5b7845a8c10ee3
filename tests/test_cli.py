"""run.py as a user meets it: one-line errors before training, and baselines through the same pipeline."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, metrics_from_scores, random_sessions, sessions_dataset_rows, write_inter
from recbole_gru4rec import evaluation
from recbole_gru4rec.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dataset of 40 users, 30 items and 8-20 events each, made for fast end-to-end runs."""
    sessions = random_sessions(0, users=40, items=30, min_length=8, max_length=20)
    folder = tmp_path_factory.mktemp("tiny")
    write_inter(folder, "tiny", sessions_dataset_rows(sessions))
    write_inter(folder, "single", [(1, 2, 10), (2, 3, 11), (3, 2, 12)])
    return str(folder)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model=Foo"], "unknown model 'Foo'"),
        (["--loss_type=HINGE"], "loss_type='HINGE' is not allowed: expected one of TOP1, BPR, TOP1-max, BPR-max, CE"),
        (["--final_activation=softmax"], "final_activation='softmax' is not allowed: expected auto, tanh, linear, relu, "
                                         "leaky-<slope>, elu-<alpha> or selu-<lambda>-<alpha>"),
        (["--train_batch_size=0"], "train_batch_size=0 is not allowed: expected an integer >= 1"),
        (["--hidden_size=-5"], "hidden_size=-5 is not allowed: expected an integer >= 1"),
        (["--n_sample=-1"], "n_sample=-1 is not allowed: expected an integer >= 0"),
        (["--dropout_prob_hidden=1.5"], "dropout_prob_hidden=1.5 is not allowed: expected a number in [0.0, 1.0)"),
        (["--logq=1.0"], "logq=1.0 needs loss_type CE"),
        (["--topk=[5]"], "valid_metric=NDCG@10 is not computed: metrics are ['Recall', 'MRR', 'NDCG', 'Hit'] at topk=[5]"),
        (["--config_files=nosuch.yaml"], "config file 'nosuch.yaml' does not exist"),
        (["positional"], "argument 'positional' is not of the form --KEY=VALUE"),
        (["--dataset=nosuch", "--data_path=/nonexistent"], "dataset 'nosuch' not found: no file /nonexistent/nosuch/nosuch.inter"),
        (["--saved=no"], "--saved=no: use true or false"),
        (["--saved=false", "--resume=saved/x-last.pth"], "--resume goes with --saved=true"),
        (["--epochs=-1"], "epochs=-1 is not allowed: expected an integer >= 1"),
        (["--MAX_ITEM_LIST_LENGTH=0"], "MAX_ITEM_LIST_LENGTH=0 is not allowed: expected an integer >= 1"),
        (["--topk=[0]"], "RecBole refuses the config: topk must be a positive integer or a list of positive integers"),
        (["--eval_args={'split':{'LS':'valid_and_test'},'order':'RO','group_by':'user','mode':'full'}"],
         "RecBole cannot split dataset 'ml-100k' with this config: The ordering args for sequential recommendation has to be 'TO'"),
        (["hyper"], "hyper needs --params_file=FILE"),
        (["hyper", "--params_file=nosuch.hyper"], "--params_file=nosuch.hyper: no such file"),
    ],
)
def test_bad_input_is_one_line_before_training(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    prefix = "run.py hyper" if args[0] == "hyper" else "run.py"
    assert err[-1].startswith(f"{prefix}: error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err) and "training" not in out


def test_dataset_without_any_training_target(tiny, capsys):
    code, _, err = run_cli(["--dataset=single", f"--data_path={tiny}"], capsys)
    assert code == 2 and "dataset 'single' has no user with 2 or more events" in err[-1]


def test_offline_ml1m_fails_fast_with_where_to_put_the_files(tmp_path):
    offline = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # nothing listens
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "run.py", "--dataset=ml-1m", f"--data_path={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=offline,
    )
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert lines[-1].startswith("run.py: error: dataset 'ml-1m'") and "--data_path=DIR" in lines[-1]
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("model", ["GRU4RecPaper", "SASRec"])
def test_models_run_through_run_py_and_write_results(model, tiny, tmp_path):
    result_file = tmp_path / "result.json"
    process = subprocess.run(
        [sys.executable, "run.py", f"--model={model}", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
         f"--result_file={result_file}", f"--checkpoint_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["model"] == model and result["dataset"] == "tiny" and result["epochs"] == 1
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit") for k in (10, 20)}
    assert len(result["train_seconds_per_epoch"]) == 1 and result["train_events_per_second"] > 0
    assert result["peak_rss_mb"] > 0 and result["config"]["MAX_ITEM_LIST_LENGTH"] == 50
    assert "ndcg@10" in process.stdout and os.path.isfile(result["checkpoint"])


def test_saved_false_writes_no_checkpoint(tiny, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    code, out, _ = run_cli(["--dataset=tiny", f"--data_path={tiny}", "--epochs=2", "--saved=False", "--state=ERROR",
                            f"--checkpoint_dir={checkpoints}", f"--result_file={tmp_path / 'result.json'}"], capsys)
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 0 and result["epochs"] == 2 and result["checkpoint"] is None
    assert not checkpoints.exists() or not list(checkpoints.iterdir())


@pytest.mark.parametrize("model", ["GRU4RecPaper", "GRU4Rec", "NARM", "SASRec", "Pop"])
def test_per_user_file_holds_each_test_user_once_averaging_to_the_reported_metrics(model, tiny, tmp_path, capsys):
    users_file, result_file = tmp_path / "users.npz", tmp_path / "result.json"
    code, _, err = run_cli([f"--model={model}", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1", "--saved=False",
                            "--state=ERROR", f"--per_user_file={users_file}", f"--result_file={result_file}"], capsys)
    assert code == 0, err[-3:]
    result = json.loads(result_file.read_text())
    users, metrics = evaluation.load(users_file)
    assert sorted(users) == sorted(str(user) for user in range(1, 41)) and result["per_user_file"] == str(users_file)
    assert set(metrics) == set(result["test_result"])
    for name, value in result["test_result"].items():
        assert float(metrics[name].mean()) == pytest.approx(value, abs=5e-5), name


def test_per_user_file_in_a_missing_folder_is_refused_before_training(capsys):
    code, _, err = run_cli(["--per_user_file=/no/such/folder/users.npz"], capsys)
    assert code == 2 and err == ["run.py: error: --per_user_file=/no/such/folder/users.npz: its folder does not exist"]


@pytest.mark.parametrize("arg,message", [
    ("--saved=false", "--saved does not go with --leaderboard (it keeps each entry's checkpoints to resume from)"),
    ("--rerun=yes", "--rerun=yes: use true or false"),
    ("--seed=7", "--seed does not go with --leaderboard (use --seeds=S,S,... or --n_seeds=N)"),
    ("--seeds=1,x", "--seeds=x: use an integer"),
    ("--seeds=1,1", "--seeds=1,1: use distinct integers, e.g. --seeds=2020,2021,2022"),
    ("--n_seeds=0", "--n_seeds=0: use a positive integer"),
    ("--seeds=1 --n_seeds=2", "--seeds and --n_seeds do not go together: give one"),
    ("--shared_cores=maybe", "--shared_cores=maybe: use true or false"),
])
def test_leaderboard_refuses_flags_it_cannot_honour(arg, message, capsys):
    code, _, err = run_cli(["--leaderboard", "--models=Pop", *arg.split()], capsys)
    assert code == 2 and err[-1] == f"run.py --leaderboard: error: {message}"


def test_misspelt_option_gets_a_did_you_mean_warning(caplog):
    from recbole_gru4rec import pipeline

    pipeline.build_config("GRU4RecPaper", "ml-100k", overrides={"hiden_size": "64"})
    assert "config key 'hiden_size' is no GRU4RecPaper or RecBole option: did you mean 'hidden_size'?" in caplog.text


def test_recbole_documented_python_pipeline(tiny):
    """README's Python example: RecBole's customized-model pipeline with our model and trainer."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_gru4rec import GRU4RecPaper, SessionParallelDataLoader, SessionParallelTrainer

    from recbole_gru4rec.pipeline import PROTOCOL_FILE

    config = Config(model=GRU4RecPaper, dataset="tiny", config_file_list=[PROTOCOL_FILE],
                    config_dict={"data_path": tiny, "epochs": 1, "state": "ERROR", "checkpoint_dir": tiny})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = GRU4RecPaper(config, train_data.dataset).to(config["device"])
    trainer = SessionParallelTrainer(config, model)
    seen = []
    original = trainer._train_epoch
    trainer._train_epoch = lambda data, *args, **kwargs: seen.append(type(data)) or original(data, *args, **kwargs)
    trainer.fit(train_data, valid_data)
    result = trainer.evaluate(test_data)
    model.eval()
    assert seen == [SessionParallelDataLoader]
    assert result["ndcg@10"] == pytest.approx(metrics_from_scores(model, test_data)["ndcg@10"], abs=6e-5)
