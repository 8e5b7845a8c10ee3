"""The RecBole 1.2.1 compatibility fixes, each against the failure it prevents."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, build, write_inter
from recbole_gru4rec import compat
from recbole_gru4rec.errors import UsageError


def test_too_new_numpy_or_pandas_is_a_clear_error():
    with pytest.raises(compat.CompatibilityError, match="numpy 2.1.0 is installed"):
        compat.check_library_versions(numpy_version="2.1.0", pandas_version="2.2.0")
    with pytest.raises(compat.CompatibilityError, match="pandas 3.0.0 is installed"):
        compat.check_library_versions(numpy_version="1.26.4", pandas_version="3.0.0")
    compat.check_library_versions()  # the pinned environment passes


def test_recbole_quick_start_imports():
    """ray 2.6.3 (imported by recbole.quick_start) needs pkg_resources and numpy 1."""
    process = subprocess.run([sys.executable, "-c", "import recbole.quick_start"], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-1000:]


def test_recbole_fills_missing_values(tmp_path):
    """On pandas 3 RecBole's fillna(inplace=True) does nothing: missing floats would stay NaN."""
    rows = [(1, 1, 10, "2.0"), (1, 2, 11, ""), (1, 3, 12, "4.0"), (2, 1, 13, "1.0"), (2, 3, 14, "")]
    folder = write_inter(tmp_path, "gaps", rows, header="user_id:token\titem_id:token\ttimestamp:float\tscore:float")
    _, data, _, _, _ = build("GRU4RecPaper", "gaps", folder, load_col={"inter": ["user_id", "item_id", "timestamp", "score"]})
    assert not np.isnan(data.inter_feat["score"].numpy()).any()


def test_checkpoints_load_weights_only_and_other_pickles_are_refused(tmp_path):
    from recbole.config import Config

    from recbole_gru4rec import pipeline

    config = pipeline.build_config("GRU4RecPaper", "ml-100k", overrides={"seed": np.int64(3)})

    class Holder(compat.SafeCheckpoints):
        cur_step, best_valid_score = 0, np.float64(0.25)
        model = torch.nn.Linear(2, 2)
        model.other_parameter = lambda: None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        saved_model_file = str(tmp_path / "model.pth")

    Holder.config = config
    Holder()._save_checkpoint(4, verbose=False)
    checkpoint = torch.load(Holder.saved_model_file, weights_only=True)  # as RecBole's evaluate and load_data_and_model do
    assert checkpoint["epoch"] == 4 and isinstance(checkpoint["config"], Config)
    assert checkpoint["config"]["seed"] == 3 and type(checkpoint["config"]["seed"]) is int
    assert checkpoint["config"]["device"] == torch.device("cpu") and checkpoint["config"]["hidden_size"] == 100
    assert checkpoint["config"].model_class is None and config.model_class is not None  # the run's own is untouched
    assert compat.load_checkpoint(Holder.saved_model_file)["config"]["device"] == "cpu"  # plain values for our code
    assert not os.path.exists(Holder.saved_model_file + ".partial")



def test_a_checkpoint_that_would_run_code_is_refused_by_our_loader_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "evil.pth")
    torch.save({"format": compat.CHECKPOINT_FORMAT, "config": Payload(), "state_dict": {}}, path)
    with pytest.raises(UsageError, match=r"cannot be read as a checkpoint of this tool \(Weights only load failed"):
        compat.load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # RecBole's own torch.load calls refuse it as well
        torch.load(path)
    assert not marker.exists()


def test_our_command_line_does_not_leak_into_recbole_config(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", "--result_file=x.json", "--hidden_size=7"])
    from recbole_gru4rec import pipeline

    config = pipeline.build_config("GRU4RecPaper", "ml-100k")
    assert config["result_file"] is None and config["hidden_size"] == 100
    assert os.path.samefile(pipeline.CONFIG_DIR, os.path.join(REPO, "recbole_gru4rec", "properties"))


def test_importing_recbole_models_leaves_anomaly_detection_off():
    """RecBole's SINE module turns autograd anomaly detection on at import: every backward gets slower."""
    from recbole.model.sequential_recommender import SINE, GRU4Rec  # noqa: F401

    assert not torch.is_anomaly_enabled()


@pytest.mark.parametrize("use_gpu,expected", [(False, "cpu"), (True, "cuda")])
def test_use_gpu_false_runs_on_the_cpu_even_with_cuda_present(monkeypatch, use_gpu, expected):
    from recbole_gru4rec import pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    config = pipeline.build_config("GRU4RecPaper", "ml-100k", overrides={"use_gpu": use_gpu})
    assert config["device"].type == expected


@pytest.mark.parametrize("batch_size", [64, 8192])
def test_pop_counts_every_training_interaction_whatever_the_batch_size(batch_size):
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender.pop import Pop

    from recbole_gru4rec import pipeline

    config = pipeline.build_config("Pop", "ml-100k", overrides={"train_batch_size": batch_size, "state": "ERROR"})
    train, _, _ = data_preparation(config, create_dataset(config))
    model = Pop(config, train._dataset)
    for batch in train:
        model.calculate_loss(batch)
    items = train._dataset.inter_feat["item_id"]
    expected = torch.bincount(items, minlength=model.n_items)  # each training interaction counted once
    assert torch.equal(model.item_cnt.squeeze(1), expected) and model.max_cnt.item() == expected.max().item()
