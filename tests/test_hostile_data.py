"""Broken or unusual atomic files: each is rejected in one line or handled as README's Reliability section says."""

import logging
import os

import pytest

from conftest import metrics_from_scores, random_sessions, sessions_dataset_rows, write_inter
from recbole_gru4rec import pipeline
from recbole_gru4rec.cli import main
from recbole_gru4rec.recommend import Recommender, read_titles

SESSIONS = random_sessions(2, users=40, items=30, min_length=6, max_length=12)
ROWS = sessions_dataset_rows(SESSIONS)


def run_cli(folder, name, capsys, *args):
    code = main([f"--dataset={name}", f"--data_path={folder}", "--epochs=1", "--saved=False", "--state=ERROR", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "name,header,rows,message",
    [
        ("noitem", "user_id:token\ttimestamp:float", [(u, t) for u, _, t in ROWS], "has no column 'item_id' (ITEM_ID_FIELD)"),
        ("nouser", "item_id:token\ttimestamp:float", [(i, t) for _, i, t in ROWS], "has no column 'user_id' (USER_ID_FIELD)"),
        ("notime", "user_id:token\titem_id:token", [(u, i) for u, i, _ in ROWS], "has no column 'timestamp' (TIME_FIELD)"),
        ("texttime", "user_id:token\titem_id:token\ttimestamp:token", ROWS, "column 'timestamp' has type 'token'; it must be timestamp:float"),
        ("badtime", "user_id:token\titem_id:token\ttimestamp:float",
         ROWS[:5] + [(ROWS[5][0], ROWS[5][1], "2021-03-04")] + ROWS[6:], "timestamp '2021-03-04' on line 7 is not a number (1 such lines)"),
        ("emptytime", "user_id:token\titem_id:token\ttimestamp:float",
         ROWS[:9] + [(ROWS[9][0], ROWS[9][1], "")] + ROWS[10:], "timestamp '' on line 11 is not a number"),
    ],
)
def test_unusable_interaction_files_are_one_line_errors(name, header, rows, message, tmp_path, capsys):
    write_inter(tmp_path, name, rows, header=header)
    code, err = run_cli(str(tmp_path), name, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("run.py: error: ") and message in err[0], err


def test_dataset_empty_after_filtering_is_a_one_line_error(tmp_path, capsys):
    write_inter(tmp_path, "sparse", ROWS)
    code, err = run_cli(str(tmp_path), "sparse", capsys, "--user_inter_num_interval=[100,inf)")
    assert code == 2 and len(err) == 1
    assert "cannot load dataset 'sparse': Some feat is empty" in err[0] and "user_inter_num_interval=[100,inf)" in err[0]


def test_fewer_items_than_topk_is_a_one_line_error(tmp_path, capsys):
    write_inter(tmp_path, "few", [(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 2, 4), (2, 3, 5)])
    code, err = run_cli(str(tmp_path), "few", capsys)
    assert code == 2 and len(err) == 1 and "has 3 items, fewer than topk=[10, 20]: set --topk to at most 3" in err[0]


def result_with_warnings(tmp_path, name, rows, caplog):
    write_inter(tmp_path, name, rows)
    with caplog.at_level(logging.WARNING):
        result = pipeline.run("GRU4RecPaper", name, overrides={"data_path": str(tmp_path), "epochs": 1, "state": "WARNING"},
                              saved=False)
    return result, caplog.text


def test_duplicate_rows_are_kept_with_a_warning(tmp_path, caplog):
    duplicated = ROWS + ROWS[:7]
    result, log = result_with_warnings(tmp_path, "dups", duplicated, caplog)
    assert "7 rows repeat the user, item and time of an earlier row" in log and "rm_dup_inter" in log
    assert result["train_events_per_epoch"] == len(duplicated) - 3 * len(SESSIONS)  # all kept: n-3 training targets a user


def test_single_event_users_are_left_out_with_a_warning(tmp_path, caplog):
    lonely = [(1000 + k, 3, 5) for k in range(6)]
    result, log = result_with_warnings(tmp_path, "single", ROWS + lonely, caplog)
    baseline = pipeline.run("GRU4RecPaper", "base", overrides={"data_path": write_inter(tmp_path, "base", ROWS), "epochs": 1,
                                                                "state": "ERROR"}, saved=False)
    assert "6 users have a single event" in log
    assert result["test_result"] == baseline["test_result"]  # the same evaluated users, the same numbers


def test_items_only_in_test_are_ranked_and_reported(tmp_path, caplog):
    # item 99 is every one of 5 users' last event, so it exists only as a test target
    rows = ROWS + [(user, 99, 1000 * int(user) + 500) for user in list(SESSIONS)[:5]]
    result, log = result_with_warnings(tmp_path, "cold", rows, caplog)
    assert "5 of 40 test targets are items never seen in training" in log
    # Every test user is evaluated, the cold targets among them, over the scores of all items.
    from recbole.quick_start import load_data_and_model

    saved = pipeline.run("GRU4RecPaper", "cold", overrides={"data_path": str(tmp_path), "epochs": 1, "state": "ERROR",
                                                           "checkpoint_dir": str(tmp_path / "saved")})
    _, model, _, _, _, test = load_data_and_model(saved["checkpoint"])
    model.eval()
    assert saved["test_result"]["recall@20"] == pytest.approx(metrics_from_scores(model, test, k=20)["recall@20"], abs=6e-5)
    assert saved["test_result"] == result["test_result"] and saved["test_users"] == 40


TITLES = {"1": ("Amélie — 東京物語", "2001"), "2": ("Tab\tinside", "1999"), "3": ("Plain", "1995")}


def test_unicode_and_tabs_in_titles_are_read_as_written(tmp_path):
    folder = write_inter(tmp_path, "titled", [(1, 1, 10), (1, 2, 11), (1, 3, 12), (2, 3, 13), (2, 1, 14)])
    with open(os.path.join(folder, "titled", "titled.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\n")
        f.writelines(f"{item}\t{title}\t{year}\n" for item, (title, year) in TITLES.items())
    config = {"data_path": os.path.join(folder, "titled"), "dataset": "titled", "ITEM_ID_FIELD": "item_id"}
    assert read_titles(config) == TITLES


def test_recommend_by_unicode_title(tmp_path):
    rows = [(user, item, 1000 * user + position) for user in range(1, 21) for position, item in enumerate([1, 2, 3, 1, 2, 3])]
    folder = write_inter(tmp_path, "titled", rows)
    with open(os.path.join(folder, "titled", "titled.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\n")
        f.writelines(f"{item}\t{title}\t{year}\n" for item, (title, year) in TITLES.items())
    result = pipeline.run("GRU4RecPaper", "titled", overrides={"data_path": folder, "epochs": 1, "state": "ERROR",
                                                                "topk": [1, 2], "valid_metric": "NDCG@2",
                                                                "checkpoint_dir": str(tmp_path)})
    recommendations = Recommender(result["checkpoint"]).for_titles(["Amélie — 東京物語"], topk=2, exclude_seen=True)
    assert {item["title"] for item in recommendations} == {"Tab\tinside", "Plain"}
