"""GRU4RecPaper through RecBole's own entry points, by name, after ``import recbole_gru4rec``.

Each entry point must run the session-parallel trainer (not RecBole's prefix-batch Trainer) and give the
same result as ``run.py``'s pipeline for the same seed and config.
"""

import os
import sys

import pytest
import torch
import yaml

import recbole_gru4rec
from conftest import random_sessions, sessions_dataset_rows, write_inter
from recbole_gru4rec import pipeline, registry, run_control
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.options import OptionError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 users, 30 items, 8-20 events each; and ``tiny.item`` with a genre list for S3Rec."""
    folder = tmp_path_factory.mktemp("entry")
    write_inter(folder, "tiny", sessions_dataset_rows(random_sessions(3, users=40, items=30, min_length=8, max_length=20)))
    with open(os.path.join(folder, "tiny", "tiny.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tclass:token_seq\n")
        f.writelines(f"{item}\tg{item % 4} h{item % 3}\n" for item in range(1, 31))
    return str(folder)


def settings(tiny, tmp_path, **extra):
    """A short run on ``tiny`` under the project's protocol, writing into ``tmp_path``."""
    return {"data_path": tiny, "epochs": 2, "state": "ERROR", "show_progress": False,
            "checkpoint_dir": str(tmp_path / "saved"), **extra}


@pytest.fixture
def epoch_loaders(monkeypatch):
    """The type of the loader each training epoch of any trainer got, in order."""
    seen = []
    original = run_control.RunControl._train_epoch

    def spy(self, train_data, *args, **kwargs):
        seen.append(type(train_data).__name__)
        return original(self, train_data, *args, **kwargs)

    monkeypatch.setattr(run_control.RunControl, "_train_epoch", spy)
    return seen


def test_recbole_lookups_find_the_plugin_by_name():
    from recbole.utils import ModelType, get_model, get_trainer

    recbole_gru4rec.register()  # idempotent: a second registration changes nothing
    assert get_model("GRU4RecPaper") is recbole_gru4rec.GRU4RecPaper
    assert get_trainer(ModelType.SEQUENTIAL, "GRU4RecPaper") is recbole_gru4rec.SessionParallelTrainer
    assert registry._recbole_model_file("GRU4RecPaper") is None  # nothing was written into RecBole's files
    # The sibling-package functions: the plugin first, RecBole's models and trainers otherwise.
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import S3RecTrainer, Trainer

    assert recbole_gru4rec.get_model("SASRec") is SASRec
    assert recbole_gru4rec.get_trainer(ModelType.SEQUENTIAL, "SASRec") is Trainer
    assert recbole_gru4rec.get_trainer(ModelType.SEQUENTIAL, "S3Rec") is S3RecTrainer
    for wrong in ("Nope", "gru4rec"):  # gru4rec.py exists, but its class is GRU4Rec
        with pytest.raises(UsageError, match=f"unknown model '{wrong}'"):
            recbole_gru4rec.get_model(wrong)


def test_registration_in_a_fresh_process_needs_only_the_import():
    import subprocess

    code = ("import recbole_gru4rec; from recbole.utils import get_model, get_trainer, ModelType; "
            "print(get_model('GRU4RecPaper').__name__, get_trainer(ModelType.SEQUENTIAL, 'GRU4RecPaper').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["GRU4RecPaper", "SessionParallelTrainer"]


def test_run_recbole_by_name_is_session_parallel_and_equals_run_py(tiny, tmp_path, epoch_loaders):
    from recbole.quick_start import run_recbole

    ours = pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path / "a"))
    assert epoch_loaders == ["SessionParallelDataLoader"] * 2
    theirs = run_recbole(model="GRU4RecPaper", dataset="tiny", config_file_list=[pipeline.PROTOCOL_FILE],
                         config_dict=settings(tiny, tmp_path / "b"))
    assert epoch_loaders == ["SessionParallelDataLoader"] * 4
    assert dict(theirs["test_result"]) == ours["test_result"]
    assert theirs["best_valid_score"] == ours["best_valid_score"] > 0


def test_quick_start_run_recbole_gru4rec_is_run_py(tiny, tmp_path):
    from recbole_gru4rec.quick_start import run_recbole_gru4rec

    ours = pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path / "a", epochs=1))
    theirs = run_recbole_gru4rec(model="GRU4RecPaper", dataset="tiny", config_dict=settings(tiny, tmp_path / "b", epochs=1))
    assert theirs["test_result"] == ours["test_result"] and theirs["valid_score_bigger"] is True


def test_objective_function_and_hyper_tuning_by_name(tiny, tmp_path, epoch_loaders):
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({"model": "GRU4RecPaper", "dataset": "tiny", **settings(tiny, tmp_path, epochs=1)}))
    params = tmp_path / "space.hyper"
    params.write_text("learning_rate choice [0.01,0.1]\n")
    tuning = HyperTuning(objective_function, params_file=str(params),
                         fixed_config_file_list=[pipeline.PROTOCOL_FILE, str(fixed)], algo="exhaustive")
    tuning.run()
    assert epoch_loaders == ["SessionParallelDataLoader"] * 2
    for learning_rate in (0.01, 0.1):
        run = pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path / "run", epochs=1, learning_rate=learning_rate))
        trial = tuning.params2result[f"learning_rate:{learning_rate}"]
        assert dict(trial["test_result"]) == run["test_result"]


def test_load_data_and_model_reads_a_run_py_checkpoint(tiny, tmp_path):
    from recbole.quick_start import load_data_and_model

    result = pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path, epochs=1))
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert type(model) is recbole_gru4rec.GRU4RecPaper and config["hidden_size"] == 100
    trained = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[name], value) for name, value in trained.items())
    evaluated = recbole_gru4rec.SessionParallelTrainer(config, model).evaluate(test_data, load_best_model=False)
    assert dict(evaluated) == result["test_result"]


def test_config_without_our_yaml_trains_the_paper_setting(tiny, tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    columns = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}  # RecBole loads no time by default
    config = Config(model=recbole_gru4rec.GRU4RecPaper, dataset="tiny", config_dict=settings(tiny, tmp_path, **columns))
    assert config["learner"] == "adam" and config["train_neg_sample_args"]["distribution"] == "uniform"  # RecBole's
    train, _, _ = data_preparation(config, create_dataset(config))
    recbole_gru4rec.GRU4RecPaper(config, train.dataset)
    paper = {"learner": "adagrad", "learning_rate": 0.01, "train_batch_size": 50, "loss_type": "TOP1",
             "hidden_size": 100, "dropout_prob_hidden": 0.5}
    assert {key: config[key] for key in paper} == paper
    assert config["train_neg_sample_args"]["distribution"] == "none"

    asked = Config(model=recbole_gru4rec.GRU4RecPaper, dataset="tiny",
                   config_dict=settings(tiny, tmp_path, train_neg_sample_args={"distribution": "uniform", "sample_num": 1},
                                        **columns))
    with pytest.raises(OptionError, match="train_neg_sample_args=.* does not apply to GRU4RecPaper"):
        recbole_gru4rec.GRU4RecPaper(asked, train.dataset)


def test_run_recboles_is_refused_in_one_line_by_the_model(monkeypatch, tmp_path):
    """RecBole's multi-process entry asks for NCCL on CUDA; given a one-process CPU group instead (gloo),
    it reaches GRU4RecPaper by name, which refuses multi-process training in one line."""
    from recbole.quick_start import run_recboles

    real_init = torch.distributed.init_process_group

    def on_the_cpu(backend, rank, world_size, init_method):
        real_init("gloo", rank=rank, world_size=world_size, init_method=f"file://{tmp_path / 'group'}")

    monkeypatch.setattr(torch.distributed, "init_process_group", on_the_cpu)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    setup = {"epochs": 1, "state": "ERROR", "nproc": 1, "world_size": 1, "ip": "localhost", "port": "5678", "offset": 0}
    try:
        with pytest.raises(OptionError, match=r"RecBole's multi-process run \(run_recboles, nproc > 1\) is not supported"):
            run_recboles(0, "GRU4RecPaper", "ml-100k", None, {"config_dict": setup})
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_s3rec_keeps_its_own_fit_under_run_control(tiny, tmp_path, epoch_loaders):
    """S3Rec's trainer pre-trains in its own ``fit``; RunControl's hooks seed, time and checkpoint its epochs."""
    overrides = settings(tiny, tmp_path, pretrain_epochs=2, save_step=1, train_batch_size=64,
                         load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]})
    result = pipeline.run("S3Rec", "tiny", overrides=overrides)
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert "S3Rec-tiny-1.pth" in saved and "S3Rec-tiny-2.pth" in saved  # PretrainTrainer.pretrain ran, not Trainer.fit
    assert len(epoch_loaders) == 2 and result["epochs"] == 2 and result["stopped_by"] == "max_epochs"
    assert result["checkpoint"].endswith("S3Rec-tiny-2.pth") and result["last_checkpoint"].endswith("-last.pth")
    # The pre-trained file loads weights-only, as S3Rec's fine-tuning stage reads it.
    assert torch.load(result["checkpoint"], weights_only=True)["epoch"] == 1


def test_serving_a_checkpoint_needs_no_compiler(tiny, tmp_path, monkeypatch):
    """A model trained with cpp_step: True is served and evaluated where no C++ compiler exists."""
    from recbole.quick_start import load_data_and_model

    from recbole_gru4rec.recommend import Recommender

    result = pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path, epochs=1))
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    checkpoint["config"]["cpp_step"] = checkpoint["config"].external_config_dict["cpp_step"] = True  # as if trained so
    torch.save(checkpoint, result["checkpoint"])
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(OptionError, match="cpp_step=True cannot be used: no C\\+\\+ compiler"):
        pipeline.run("GRU4RecPaper", "tiny", overrides=settings(tiny, tmp_path, epochs=1, cpp_step=True))
    assert len(Recommender(result["checkpoint"]).for_user("1", topk=5)) == 5
    config, model, _, _, _, _ = load_data_and_model(result["checkpoint"])
    assert config["cpp_step"] is True and type(model) is recbole_gru4rec.GRU4RecPaper


def test_run_py_refuses_a_trainer_without_recbole_epoch_loop(monkeypatch):
    """Decision-tree models train with RecBole's DecisionTreeTrainer, which has no epochs to hook into."""
    from recbole.trainer import DecisionTreeTrainer

    monkeypatch.setattr(registry, "get_trainer", lambda model_type, name: DecisionTreeTrainer)
    with pytest.raises(UsageError, match="model 'Pop' trains with RecBole's DecisionTreeTrainer, which has no epoch loop"):
        pipeline.build_config("Pop", "ml-100k")
