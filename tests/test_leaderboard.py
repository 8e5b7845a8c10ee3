"""run.py --leaderboard end to end on a tiny budget, and its refusals."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from recbole_gru4rec.cli import main
from recbole_gru4rec.leaderboard.report import label_offsets, markdown


def leaderboard(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--leaderboard", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_two_models_one_epoch_on_ml100k(tmp_path):
    entry_config = tmp_path / "GRU4RecPaper-bpr.yaml"
    entry_config.write_text("loss_type: BPR\n")
    args = ["--dataset=ml-100k", f"--models=GRU4RecPaper:{entry_config},Pop", "--epochs=1", "--output_dir=out"]
    process = leaderboard(tmp_path, *args)
    assert process.returncode == 0, process.stderr[-3000:]
    board = json.loads((tmp_path / "out" / "leaderboard-ml-100k.json").read_text())
    header, rows = board["header"], board["rows"]
    assert [(row["model"], row["config_name"]) for row in rows] == [("GRU4RecPaper", "bpr"), ("Pop", "default")]
    for row in rows:
        assert set(row["test_result"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20"}
        assert row["epochs"] == 1 and row["stopped_by"] == "max_epochs"
        assert row["train_seconds_per_epoch"] > 0 and row["train_events_per_second"] > 0 and row["peak_rss_mb"] > 0
        assert set(row["best_valid_result"]) == set(row["test_result"])
    assert rows[0]["config"]["loss_type"] == "BPR"  # the entry's own file reached the run
    assert rows[0]["execution"] == {"fused_step": True, "compile_step": False, "cpp_step": "auto"} and "fused_step" not in rows[0]["config"]
    assert header["protocol"]["seed"] == 2020 and header["protocol"]["MAX_ITEM_LIST_LENGTH"] == 50
    assert header["machine"]["cpu_cores"] >= 1 and header["versions"]["recbole"] == "1.2.1"
    table = (tmp_path / "out" / "leaderboard-ml-100k.md").read_text()
    assert "| GRU4RecPaper (bpr) |" in table and "| Pop |" in table
    assert (tmp_path / "out" / "leaderboard-ml-100k.png").read_bytes()[:4] == b"\x89PNG"

    again = leaderboard(tmp_path, *args)  # finished rows are not trained again
    assert again.returncode == 0 and again.stdout.count("already in") == 2, again.stderr[-2000:]
    entry_config.write_text("loss_type: BPR\nfused_step: False\n")  # how a step is computed: the same configuration
    same = leaderboard(tmp_path, *args)
    assert same.returncode == 0 and same.stdout.count("already in") == 2, same.stderr[-2000:]
    board_file = tmp_path / "out" / "leaderboard-ml-100k.json"
    older = json.loads(board_file.read_text())
    older["rows"][0]["config"]["fused_step"] = True  # as rows written before it was an execution option
    board_file.write_text(json.dumps(older))
    same = leaderboard(tmp_path, *args)
    assert same.returncode == 0 and same.stdout.count("already in") == 2, same.stderr[-2000:]
    entry_config.write_text("loss_type: BPR\nlearning_rate: 0.02\n")  # a changed entry is trained again
    changed = leaderboard(tmp_path, *args)
    assert changed.returncode == 0 and changed.stdout.count("already in") == 1 and "config changed" in changed.stdout
    assert json.loads((tmp_path / "out" / "leaderboard-ml-100k.json").read_text())["rows"][-1]["config"]["learning_rate"] == 0.02
    other = leaderboard(tmp_path, *[arg.replace("--epochs=1", "--epochs=2") for arg in args])
    assert other.returncode == 2 and "do not share one protocol" in other.stderr and "leaderboard:" not in other.stdout


def test_markdown_marks_time_budgeted_rows():
    row = {"model": "SASRec", "config_name": "default", "test_result": {"ndcg@10": 0.1}, "epochs": 3,
           "stopped_by": "time_budget", "train_seconds_per_epoch": 10.0, "train_seconds_total": 30.0,
           "train_events_per_second": 100.0, "eval_seconds": 1.0, "peak_rss_mb": 500.0, "time_budget_min": 0.5}
    header = {"dataset": "d", "command": "c", "machine": {"cpu": "x", "cpu_cores": 2, "gpu": None}, "versions": {},
              "protocol": {"seed": 1}, "time_budget_min": 0.5}
    table = markdown(header, [row, dict(row, model="NARM", stopped_by="early_stopping", time_budget_min=None)])
    assert "| SASRec [time budget] | nan | nan | 0.1000 | " in table and "| time_budget | 0.5 |" in table
    assert "| NARM | nan | nan | 0.1000 | " in table and "| early_stopping | none |" in table


@pytest.mark.parametrize(
    "models,config_text,message",
    [
        ("GRU4RecPaper,Nope", None, "unknown model 'Nope'"),
        ("GRU4RecPaper,GRU4RecPaper", None, "--models lists GRU4RecPaper:default twice"),
        ("GRU4RecPaper:{config}", "epochs: 5\nloss_type: BPR\n", "sets epochs: the protocol is shared by every model"),
        ("GRU4RecPaper:missing.yaml", None, "config file 'missing.yaml' does not exist"),
    ],
)
def test_bad_leaderboards_are_one_line_errors(models, config_text, message, tmp_path, capsys):
    config = tmp_path / "entry.yaml"
    if config_text is not None:
        config.write_text(config_text)
    code = main(["--leaderboard", f"--models={models.format(config=config)}", f"--output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("run.py --leaderboard: error: ") and message in err[0]


def test_labels_of_neighbouring_points_go_below_them():
    # NARM and SASRec on ml-1m-u2999: near in time and in NDCG@10, so the lower one's label goes below it
    points = [(2895.0, 0.1113), (3090.0, 0.1087), (929.0, 0.1466), (0.7, 0.0162), (2860.0, 0.1332)]
    assert label_offsets(points) == [(6, 4), (6, -11), (6, 4), (6, 4), (6, 4)]


def test_the_report_imports_no_model_or_training_code():
    code = ("import sys, recbole_gru4rec.leaderboard.report; "
            "print(' '.join(m for m in sys.modules if m.startswith('recbole_gru4rec')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "recbole_gru4rec.leaderboard.report" in loaded
    training = {"gru4rec_paper", "trainer", "steps", "run_control", "pipeline"}
    assert not [module for module in loaded if set(module.split(".")[1:2]) & training]
    assert "matplotlib" not in subprocess.run([sys.executable, "-c", code.replace("startswith('recbole_gru4rec')",
                                               "startswith('matplotlib')")], capture_output=True, text=True).stdout
