"""run.py recommend and recbole_gru4rec.recommend, on models trained here on a small dataset with titles."""

import json
import os
import shutil
import warnings

import pytest
import torch

from conftest import random_sessions, sessions_dataset_rows, write_inter
from recbole_gru4rec import pipeline
from recbole_gru4rec.cli import main
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.recommend import Recommender, recommend

TITLES = {1: ("Toy Story", 1995), 2: ("Jumanji", 1995), 3: ("Heat", 1995), 4: ("Heat", 1986), 5: ("Amélie", 2001)}


def title_of(item):
    return TITLES.get(item, (f"Movie {item}", 1990 + item % 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of GRU4RecPaper, SASRec, NARM, GRU4Rec and BPR (not sequential), one epoch on 'films'."""
    sessions = random_sessions(1, users=30, items=30, min_length=6, max_length=15)
    folder = tmp_path_factory.mktemp("films")
    write_inter(folder, "films", sessions_dataset_rows(sessions))
    with open(os.path.join(folder, "films", "films.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\n")
        for item in range(1, 31):
            f.write(f"{item}\t{title_of(item)[0]}\t{title_of(item)[1]}\n")
    checkpoints = {}
    for model in ("GRU4RecPaper", "SASRec", "NARM", "GRU4Rec", "BPR"):
        overrides = {"data_path": str(folder), "epochs": 1, "state": "ERROR", "checkpoint_dir": str(folder / model)}
        if model == "BPR":
            overrides.update({"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
                              "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}})
        checkpoints[model] = pipeline.run(model, "films", overrides=overrides)["checkpoint"]
    return sessions, str(folder), checkpoints


def test_user_recommendations_follow_the_model_scores_of_the_whole_history(trained):
    sessions, _, checkpoints = trained
    recommender = Recommender(checkpoints["GRU4RecPaper"])
    user = 7
    history = [recommender.item_index(item) for item in sessions[user]]  # from the raw rows, in time order
    assert recommender.user_history(str(user))[0] == history
    with torch.no_grad():
        interaction = {recommender.model.ITEM_SEQ: torch.tensor([history[-50:]]),
                       recommender.model.ITEM_SEQ_LEN: torch.tensor([len(history[-50:])])}
        scores = recommender.model.full_sort_predict(interaction)[0]
    scores[0] = float("-inf")
    expected = [str(recommender.item_tokens[i]) for i in scores.topk(5).indices.tolist()]
    got = recommender.for_user(str(user), topk=5, exclude_seen=False)
    assert [r["item_id"] for r in got] == expected and [r["rank"] for r in got] == [1, 2, 3, 4, 5]
    unseen = recommender.for_user(str(user), topk=5)
    assert not {r["item_id"] for r in unseen} & {str(item) for item in sessions[user]}
    assert all(a["score"] >= b["score"] for a, b in zip(unseen, unseen[1:]))
    assert unseen[0]["title"] == title_of(int(unseen[0]["item_id"]))[0]


def test_history_by_titles_equals_history_by_ids(trained):
    _, _, checkpoints = trained
    recommender = Recommender(checkpoints["GRU4RecPaper"])
    by_ids = recommender.for_history(["1", "2", "5"], topk=4)
    assert recommender.for_titles(["toy story", "Jumanji (1995)", "Amélie"], topk=4) == by_ids


@pytest.mark.parametrize("model", ["GRU4RecPaper", "SASRec", "NARM", "GRU4Rec"])
def test_cli_prints_a_table_and_json(trained, model, capsys):
    _, _, checkpoints = trained
    assert main(["recommend", f"--checkpoint={checkpoints[model]}", "--user=3", "--topk=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Top 3 for user 3:" and len(lines) == 5
    assert main(["recommend", f"--checkpoint={checkpoints[model]}", "--history=1,2", "--json", "--topk=2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in record["recommendations"]] == [1, 2]


def test_exclude_seen_false_and_the_one_call_function(trained, capsys):
    sessions, _, checkpoints = trained
    args = ["recommend", f"--checkpoint={checkpoints['GRU4RecPaper']}", "--user=7", "--topk=30", "--json"]
    assert main(args + ["--exclude-seen=false"]) == 0
    everything = json.loads(capsys.readouterr().out)["recommendations"]
    assert {r["item_id"] for r in everything} >= {str(item) for item in sessions[7]}  # seen items are back
    assert recommend(checkpoints["GRU4RecPaper"], user="7", topk=30, exclude_seen=False) == everything
    with pytest.raises(UsageError, match="give exactly one of user, history or titles"):
        recommend(checkpoints["GRU4RecPaper"], user="7", history=["1"])


def test_users_file_gives_one_json_line_per_user(trained, tmp_path, capsys):
    _, _, checkpoints = trained
    users_file = tmp_path / "users.txt"
    users_file.write_text("1\n2\n\n30\n")
    assert main(["recommend", f"--checkpoint={checkpoints['GRU4RecPaper']}", f"--users-file={users_file}", "--topk=4"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["user"] for r in records] == ["1", "2", "30"] and all(len(r["recommendations"]) == 4 for r in records)


def bad_checkpoints(folder, checkpoints):
    truncated = os.path.join(folder, "truncated.pth")
    with open(checkpoints["GRU4RecPaper"], "rb") as source, open(truncated, "wb") as target:
        target.write(source.read()[:2000])
    garbage = os.path.join(folder, "garbage.pth")
    with open(garbage, "wb") as f:
        f.write(b"not a checkpoint at all")
    foreign = os.path.join(folder, "foreign.pth")
    torch.save({"state_dict": {}}, foreign)
    return truncated, garbage, foreign


def test_bad_input_is_one_line(trained, capsys):
    _, folder, checkpoints = trained
    truncated, garbage, foreign = bad_checkpoints(folder, checkpoints)
    gru = f"--checkpoint={checkpoints['GRU4RecPaper']}"
    cases = [
        ([gru, "--user=999"], "unknown user id '999'"),
        ([gru, "--history=1,777"], "unknown item id '777'"),
        ([gru, "--history=,"], "the history is empty"),
        ([gru, "--history-titles=Heat"], "title 'Heat' is ambiguous: 3: Heat (1995); 4: Heat (1986)"),
        ([gru, "--history-titles=Jumanjo"], "no movie titled 'Jumanjo'; closest titles: Jumanji"),
        ([gru, "--user=1", "--topk=0"], "topk=0 is not allowed"),
        ([gru], "one of the arguments --user --history --history-titles --users-file is required"),
        ([f"--checkpoint={checkpoints['BPR']}", "--user=1"], "holds BPR, not a sequential model"),
        (["--checkpoint=nowhere.pth", "--user=1"], "checkpoint 'nowhere.pth' does not exist"),
        ([f"--checkpoint={truncated}", "--user=1"], "cannot be read as a checkpoint of this tool"),
        ([f"--checkpoint={garbage}", "--user=1"], "cannot be read as a checkpoint of this tool"),
        ([f"--checkpoint={foreign}", "--user=1"], "was not written by recbole-gru4rec"),
    ]
    for args, message in cases:
        assert main(["recommend", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_checkpoint_whose_dataset_is_gone(trained, tmp_path):
    sessions, folder, _ = trained
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved, ignore=shutil.ignore_patterns("GRU4RecPaper", "SASRec", "NARM", "GRU4Rec", "BPR"))
    overrides = {"data_path": str(moved), "epochs": 1, "state": "ERROR", "checkpoint_dir": str(tmp_path)}
    checkpoint = pipeline.run("GRU4RecPaper", "films", overrides=overrides)["checkpoint"]
    shutil.rmtree(moved)
    with pytest.raises(UsageError, match="the dataset of checkpoint .* is not found: no file"):
        Recommender(checkpoint)


def test_gru4recpaper_recommends_from_the_whole_history_and_sasrec_from_its_window(trained):
    sessions, folder, _ = trained
    user = max(sessions, key=lambda u: len(sessions[u]))
    for model in ("GRU4RecPaper", "SASRec"):
        checkpoint = pipeline.run(model, "films", overrides={"data_path": folder, "epochs": 1, "state": "ERROR",
                                                            "MAX_ITEM_LIST_LENGTH": 5, "checkpoint_dir": f"{folder}/short-{model}"})["checkpoint"]
        recommender = Recommender(checkpoint)
        history = recommender.user_history(str(user))[0]
        assert len(history) > 5
        net = recommender.model
        with torch.no_grad():
            if model == "GRU4RecPaper":  # one session-parallel step per event, from a zero state: every event read
                hidden = torch.zeros(net.num_layers, 1, net.hidden_size)
                for item in history:
                    output, hidden = net.session_step(torch.tensor([item]), hidden)
                scores = (output @ net.output_weights.weight.T + net.output_bias)[0]
            else:
                scores = net.full_sort_predict({net.ITEM_SEQ: torch.tensor([history[-5:]]), net.ITEM_SEQ_LEN: torch.tensor([5])})[0]
        scores[0] = float("-inf")
        expected = [str(recommender.item_tokens[i]) for i in scores.topk(5).indices.tolist()]
        assert [r["item_id"] for r in recommender.for_user(str(user), topk=5, exclude_seen=False)] == expected, model


def test_loading_a_checkpoint_does_not_print_pandas_fillna_warning(trained):
    """The dataset load behind a recommendation hides pandas 2's fillna warning, as training does (compat)."""
    _, _, checkpoints = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Recommender(checkpoints["GRU4RecPaper"])
    assert [str(w.message)[:60] for w in caught if "chained assignment" in str(w.message)] == []
