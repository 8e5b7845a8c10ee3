"""run.py --leaderboard end to end on a tiny budget, and its refusals."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, random_sessions, sessions_dataset_rows, wait_for_epoch, write_inter
from recbole_gru4rec import evaluation
from recbole_gru4rec.cli import main
from recbole_gru4rec.leaderboard.report import TABLE_METRICS, markdown, paired_comparisons


def leaderboard(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--leaderboard", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_two_models_two_seeds_one_epoch_on_ml100k(tmp_path):
    entry_config = tmp_path / "GRU4RecPaper-bpr.yaml"
    entry_config.write_text("loss_type: BPR\n")
    args = ["--dataset=ml-100k", f"--models=GRU4RecPaper:{entry_config},Pop", "--epochs=1", "--n_seeds=2", "--output_dir=out"]
    process = leaderboard(tmp_path, *args)
    assert process.returncode == 0, process.stderr[-3000:]
    board = json.loads((tmp_path / "out" / "leaderboard-ml-100k.json").read_text())
    header, rows = board["header"], board["rows"]
    assert [(row["model"], row["config_name"], row["seed"]) for row in rows] == [
        ("GRU4RecPaper", "bpr", 2020), ("GRU4RecPaper", "bpr", 2021), ("Pop", "default", 2020), ("Pop", "default", 2021)]
    for row in rows:
        assert set(row["test_result"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20"}
        assert row["epochs"] == 1 and row["stopped_by"] == "max_epochs" and row["config"]["seed"] == row["seed"]
        assert row["train_seconds_per_epoch"] > 0 and row["train_events_per_second"] > 0 and row["peak_rss_mb"] > 0
        assert set(row["best_valid_result"]) == set(row["test_result"])
        users, metrics = evaluation.load(tmp_path / "out" / row["per_user_file"])
        assert len(users) == len(set(users)) == 943  # every ml-100k user once, by token
        for name, value in row["test_result"].items():  # the per-user values average to RecBole's own results
            assert round(float(metrics[name].mean()), 4) == pytest.approx(value, abs=1e-4), name
    first, second = rows[0]["test_result"], rows[1]["test_result"]
    assert first != second  # the seed reached the run
    assert rows[0]["config"]["loss_type"] == "BPR"  # the entry's own file reached the run
    assert rows[0]["execution"] == {"fused_step": True, "compile_step": False, "cpp_step": "auto"} and "fused_step" not in rows[0]["config"]
    assert "seed" not in header["protocol"] and header["protocol"]["MAX_ITEM_LIST_LENGTH"] == 50
    assert header["machine"]["cpu_cores"] >= 1 and header["versions"]["recbole"] == "1.2.1"
    table = (tmp_path / "out" / "leaderboard-ml-100k.md").read_text()
    mean = (first["ndcg@10"] + second["ndcg@10"]) / 2
    sd = abs(first["ndcg@10"] - second["ndcg@10"]) / 2 ** 0.5
    assert "| GRU4RecPaper (bpr) (reference) | 2020, 2021 | " in table and f"{mean:.4f} ± {sd:.4f}" in table
    assert "| Pop | 2020, 2021 | " in table and "paired t-test over the 943 test" in table
    assert (tmp_path / "out" / "leaderboard-ml-100k.png").read_bytes()[:4] == b"\x89PNG"

    again = leaderboard(tmp_path, *args)  # finished runs are not trained again
    assert again.returncode == 0 and again.stdout.count("already in") == 4, again.stderr[-2000:]
    entry_config.write_text("loss_type: BPR\nfused_step: False\n")  # how a step is computed: the same configuration
    same = leaderboard(tmp_path, *args)
    assert same.returncode == 0 and same.stdout.count("already in") == 4, same.stderr[-2000:]
    board_file = tmp_path / "out" / "leaderboard-ml-100k.json"
    older = json.loads(board_file.read_text())
    older["rows"][0]["config"]["fused_step"] = True  # as rows written before it was an execution option
    del older["rows"][0]["config"]["eval_history"]  # as rows written before the option existed (its default)
    del older["rows"][3]["seed"], older["rows"][3]["per_user_file"]  # as rows written before seeds: run again
    board_file.write_text(json.dumps(older))
    (tmp_path / "out" / "leaderboard-ml-100k-users" / "Pop-default-seed2021.npz").unlink()
    same = leaderboard(tmp_path, *args)
    assert same.returncode == 0 and same.stdout.count("already in") == 3, same.stderr[-2000:]
    assert "Pop:default seed 2021: its row has no per-user metrics file; training it again" in same.stdout
    assert json.loads(board_file.read_text())["rows"][-1]["test_result"] == rows[3]["test_result"]  # reproduced
    entry_config.write_text("loss_type: BPR\nlearning_rate: 0.02\n")  # a changed entry is trained again
    changed = leaderboard(tmp_path, *args[:-2], "--seeds=2021", "--output_dir=out")
    assert changed.returncode == 0 and changed.stdout.count("already in") == 1 and "config changed" in changed.stdout
    assert json.loads(board_file.read_text())["rows"][-1]["config"]["learning_rate"] == 0.02
    other = leaderboard(tmp_path, *[arg.replace("--epochs=1", "--epochs=2") for arg in args])
    assert other.returncode == 2 and "do not share one protocol" in other.stderr and "leaderboard:" not in other.stdout


def run_row(model, seed, ndcg, valid=0.0, config_name="default", **extra):
    """A finished leaderboard row as the runner writes it (only what the report reads)."""
    return dict({"model": model, "config_name": config_name, "seed": seed, "test_result": {"ndcg@10": ndcg},
                 "best_valid_result": {"ndcg@10": valid}, "epochs": 3, "stopped_by": "early_stopping",
                 "train_seconds_per_epoch": 10.0, "train_seconds_total": 30.0, "train_events_per_second": 100.0,
                 "eval_seconds": 1.0, "peak_rss_mb": 500.0, "time_budget_min": None,
                 "per_user_file": f"users/{model}-{config_name}-{seed}.npz"}, **extra)


HEADER = {"dataset": "d", "command": "c", "machine": {"cpu": "x", "cpu_cores": 2, "gpu": None}, "versions": {},
          "protocol": {"valid_metric": "NDCG@10"}, "time_budget_min": 0.5}


def test_markdown_marks_time_budgeted_rows_and_shared_cores():
    rows = [run_row("SASRec", 1, 0.1, stopped_by="time_budget", time_budget_min=0.5),
            run_row("NARM", 1, 0.2), run_row("NARM", 2, 0.4, shared_cores=True)]
    table = markdown(HEADER, rows)
    assert "| SASRec [time budget] | 1 | nan | nan | 0.1000 | " in table and "| time_budget | 0.5 |" in table
    assert "| NARM | 1, 2 | nan | nan | 0.3000 ± 0.1414 | " in table and "| early_stopping | none | 10.00 † | 30 † |" in table


def test_two_commands_writing_one_leaderboard_keep_each_others_rows(tmp_path):
    from recbole_gru4rec.leaderboard.report import Leaderboard
    from recbole_gru4rec.leaderboard.runner import Entry

    first, second = Leaderboard("d", str(tmp_path)), Leaderboard("d", str(tmp_path))  # both started on an empty folder
    header = dict(HEADER, versions={}, machine=HEADER["machine"])
    first.add(Entry("Pop"), 1, run_row("Pop", 1, 0.1, config={}), header)
    second.add(Entry("GRU4Rec"), 1, run_row("GRU4Rec", 1, 0.2, config={}), header)
    rows = json.loads((tmp_path / "leaderboard-d.json").read_text())["rows"]
    assert [(row["model"], row["seed"]) for row in rows] == [("Pop", 1), ("GRU4Rec", 1)]


def test_the_header_lists_every_command_that_wrote_rows(tmp_path):
    from recbole_gru4rec.leaderboard.report import Leaderboard
    from recbole_gru4rec.leaderboard.runner import Entry

    old_header = dict(HEADER, command="run.py --leaderboard --models=Pop")  # a file from before the list was kept
    (tmp_path / "leaderboard-d.json").write_text(json.dumps({"header": old_header, "rows": [run_row("Pop", 1, 0.1, config={})]}))
    board = Leaderboard("d", str(tmp_path))
    for command in ("run.py --leaderboard --models=NARM", "run.py --leaderboard --models=Pop"):
        board.add(Entry("NARM"), 1, run_row("NARM", 1, 0.2, config={}), dict(HEADER, command=command))
    header = json.loads((tmp_path / "leaderboard-d.json").read_text())["header"]
    assert header["commands"] == ["run.py --leaderboard --models=Pop", "run.py --leaderboard --models=NARM"]
    assert ("Commands (each wrote some of the rows): `run.py --leaderboard --models=Pop`; "
            "`run.py --leaderboard --models=NARM`") in (tmp_path / "leaderboard-d.md").read_text()
    assert "Command: `c`" in markdown(HEADER, [run_row("Pop", 1, 0.1)])


def test_paired_test_matches_the_t_statistic_by_hand():
    a, b = [0.5, 0.0, 1.0, 0.25], [0.25, 0.0, 0.5, 0.5]  # differences 0.25, 0, 0.5, -0.25: mean 0.125
    sd = ((0.125 ** 2 + 0.125 ** 2 + 0.375 ** 2 + 0.375 ** 2) / 3) ** 0.5
    test = evaluation.paired_test(a, b)
    assert test["difference"] == pytest.approx(0.125) and test["standard_error"] == pytest.approx(sd / 2)
    from scipy.stats import t as student_t

    assert test["p_value"] == pytest.approx(2 * student_t.sf(0.125 / (sd / 2), df=3)) and test["users"] == 4
    assert evaluation.paired_test([1.0, 2.0], [0.0, 1.0])["p_value"] == 0.0  # the same gain for every user
    assert evaluation.paired_test([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0


def test_entries_are_tested_against_the_best_validated_gru4recpaper_with_seeds_averaged_per_user(tmp_path):
    users = [f"u{index}" for index in range(40)]
    rng = np.random.default_rng(0)
    base = rng.random(40)
    per_seed = {  # (model, config, seed): per-user ndcg@10; the reference's users scored as base, in two seeds
        ("GRU4RecPaper", "tuned", 1): base + 0.01, ("GRU4RecPaper", "tuned", 2): base - 0.01,
        ("GRU4RecPaper", "paper", 1): base - 0.3 + 0.01 * rng.standard_normal(40),  # better validation, so it would be the reference if tested alone
        ("SASRec", "default", 1): base + 0.2 + 0.01 * rng.standard_normal(40),
        ("NARM", "default", 1): base + 0.001 * rng.standard_normal(40),
    }
    (tmp_path / "users").mkdir()
    rows = []
    for (model, config_name, seed), ndcg in per_seed.items():
        row = run_row(model, seed, float(ndcg.mean()), valid=0.9 if config_name == "tuned" else 0.1, config_name=config_name)
        metrics = {name: ndcg if name == "ndcg@10" else np.zeros(40) for name in TABLE_METRICS}
        evaluation.save(tmp_path / row["per_user_file"], users if model != "NARM" else users[::-1],
                      {name: (values if model != "NARM" else values[::-1]) for name, values in metrics.items()})
        rows.append(row)
    comparisons = paired_comparisons(HEADER, rows, str(tmp_path))
    assert comparisons["reference"] == "GRU4RecPaper:tuned"
    sasrec = comparisons["tests"]["SASRec:default"]["ndcg@10"]
    assert sasrec["difference"] == pytest.approx(float(np.mean(per_seed[("SASRec", "default", 1)] - base)))
    assert sasrec["p_value"] < 1e-6 and comparisons["tests"]["GRU4RecPaper:paper"]["ndcg@10"]["difference"] == pytest.approx(-0.3, abs=0.01)
    narm = comparisons["tests"]["NARM:default"]["ndcg@10"]  # users stored in another order: paired by token
    assert abs(narm["difference"]) < 0.001 and narm["users"] == 40
    table = markdown(HEADER, rows, comparisons)
    sasrec_mean = float(per_seed[("SASRec", "default", 1)].mean())
    assert f"| SASRec | 1 | nan | nan | {sasrec_mean:.4f} ▲ | nan |" in table and " ▼ | nan |" in table
    assert "| GRU4RecPaper (tuned) (reference) | 1, 2 |" in table
    (tmp_path / rows[-1]["per_user_file"]).unlink()
    untested = paired_comparisons(HEADER, rows, str(tmp_path))
    assert "NARM:default" not in untested["tests"] and "Not tested (a run without its per-user metrics file): NARM." in markdown(HEADER, rows, untested)


@pytest.mark.parametrize(
    "models,config_text,message",
    [
        ("GRU4RecPaper,Nope", None, "unknown model 'Nope'"),
        ("GRU4RecPaper,GRU4RecPaper", None, "--models lists GRU4RecPaper:default twice"),
        ("GRU4RecPaper:{config}", "epochs: 5\nloss_type: BPR\n", "sets epochs: the protocol is shared by every model"),
        ("GRU4RecPaper:missing.yaml", None, "config file 'missing.yaml' does not exist"),
        ("GRU4RecPaper:{config}+", "loss_type: BPR\n", "expected MODEL, MODEL:CONFIG.yaml or MODEL:A.yaml+B.yaml"),
    ],
)
def test_bad_leaderboards_are_one_line_errors(models, config_text, message, tmp_path, capsys):
    config = tmp_path / "entry.yaml"
    if config_text is not None:
        config.write_text(config_text)
    code = main(["--leaderboard", f"--models={models.format(config=config)}", f"--output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("run.py --leaderboard: error: ") and message in err[0]


def test_a_row_from_before_an_option_existed_stands_only_for_its_default():
    from recbole_gru4rec.leaderboard.runner import same_config

    current = {"mechanisms": 2, "loss_type": "CE", "eval_history": "window", "fused_step": True}
    assert same_config({"mechanisms": 2, "loss_type": "CE"}, current)
    assert not same_config({"mechanisms": 2, "loss_type": "CE"}, dict(current, eval_history="full"))
    assert not same_config({"mechanisms": 1, "loss_type": "CE", "eval_history": "window"}, current)
    assert not same_config({"loss_type": "CE"}, {"loss_type": "CE", "hidden_size": 100})  # a baseline: exact


def test_an_entry_of_two_config_files_merges_them_in_order():
    from recbole_gru4rec.leaderboard.runner import Entry, Run

    entry = Entry(f"GRU4RecPaper:{REPO}/configs/GRU4RecPaper-tuned-ml-100k.yaml+{REPO}/configs/eval-history-full.yaml")
    assert entry.key == "GRU4RecPaper:tuned-ml-100k+eval-history-full"
    config = Run(entry, 2021, "ml-100k", [], {}).config()
    assert config["eval_history"] == "full" and config["loss_type"] == "CE" and config["session_max_targets"] == 50
    assert config["seed"] == 2021 and config["checkpoint_dir"].endswith("GRU4RecPaper-tuned-ml-100k+eval-history-full-seed2021")


def test_the_plot_names_each_entry_once_best_first_with_its_seeds_mean_and_budgeted_ones_hollow():
    from recbole_gru4rec.leaderboard.report import accuracy_against_time

    def row(model, config_name, ndcg, seconds, stopped_by="early_stopping"):
        return {"model": model, "config_name": config_name, "stopped_by": stopped_by, "train_seconds_total": seconds,
                "test_result": {"ndcg@10": ndcg}}

    # NARM and SASRec lie close in both axes (ml-1m-u2999's budgeted rows), where beside-the-point labels overlapped.
    rows = [row("NARM", "default", 0.1113, 2895.0), row("SASRec", "default", 0.1087, 3090.0, "time_budget"),
            row("GRU4RecPaper", "tuned", 0.14, 900.0), row("Pop", "default", 0.0162, 0.7),
            row("GRU4RecPaper", "tuned", 0.16, 950.0)]
    figure = accuracy_against_time({"dataset": "d", "machine": {"cpu_cores": 2, "gpu": None}}, rows)
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "GRU4RecPaper (tuned)", "NARM", "SASRec [time budget]", "Pop"]
    points = {container.get_label(): container.lines[0] for container in axes.containers}
    assert list(points["GRU4RecPaper (tuned)"].get_xdata()) == [925.0]
    assert list(points["GRU4RecPaper (tuned)"].get_ydata()) == pytest.approx([0.15])
    error_bar = axes.containers[0].lines[2][0].get_segments()[0]  # from mean - sd to mean + sd, sd of 0.14 and 0.16
    assert [y for _, y in error_bar] == pytest.approx([0.15 - 0.02 / 2 ** 0.5, 0.15 + 0.02 / 2 ** 0.5])
    hollow = [label for label, line in points.items() if line.get_markerfacecolor() == "none"]
    assert hollow == ["SASRec [time budget]"]
    assert len({line.get_color() for line in points.values()}) == 4


def test_the_report_imports_no_model_or_training_code():
    code = ("import sys, recbole_gru4rec.leaderboard.report; "
            "print(' '.join(m for m in sys.modules if m.startswith('recbole_gru4rec')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "recbole_gru4rec.leaderboard.report" in loaded
    training = {"gru4rec_paper", "trainer", "steps", "run_control", "pipeline"}
    assert not [module for module in loaded if set(module.split(".")[1:2]) & training]
    assert "matplotlib" not in subprocess.run([sys.executable, "-c", code.replace("startswith('recbole_gru4rec')",
                                               "startswith('matplotlib')")], capture_output=True, text=True).stdout


def run_py_process(marker):
    """The pid of the run.py process whose command line holds ``marker``, and its parent's (the Ray worker), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while being read
        if marker in command and "recbole_gru4rec" in command:
            return int(pid), parent
    return None


class SideBySide(threading.Thread):
    """Watches /proc until stopped; ``seen`` turns true once the run.py processes of all ``markers`` were alive at
    one moment (sampled every 50 ms, so a loaded machine that starts one late still counts)."""

    def __init__(self, markers):
        super().__init__(daemon=True)
        self.markers, self.seen, self.stopped = markers, False, threading.Event()

    def run(self):
        while not self.seen and not self.stopped.wait(0.05):
            self.seen = all(run_py_process(marker) for marker in self.markers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker's process in /proc")
def test_ray_leaderboard_survives_a_killed_worker_and_equals_the_serial_rows(tmp_path, ray_cluster):
    data = write_inter(tmp_path, "tiny", sessions_dataset_rows(random_sessions(3, users=60, items=40, min_length=10, max_length=30)))
    # The fused step in Python: no run waits for the C++ step's build, which a loaded machine can make slow.
    (tmp_path / "a.yaml").write_text("n_sample: 16\ndropout_prob_hidden: 0.3\nsession_order: shuffle\ncpp_step: False\n")
    (tmp_path / "b.yaml").write_text("loss_type: BPR\ncpp_step: False\n")
    common = ["--dataset=tiny", f"--data_path={data}", "--models=GRU4RecPaper:a.yaml,GRU4RecPaper:b.yaml", "--epochs=12",
              "--stopping_step=100", "--state=ERROR"]
    env = dict(ray_cluster, OMP_NUM_THREADS="1")  # the serial run: one thread, as each 1-CPU Ray task has
    serial = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--leaderboard", *common, "--output_dir=serial",
                             "--checkpoint_dir=saved-serial"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert serial.returncode == 0, serial.stderr[-3000:]

    side_by_side = SideBySide(["GRU4RecPaper-a-seed2020", "GRU4RecPaper-b-seed2020"])
    side_by_side.start()
    parallel = subprocess.Popen([sys.executable, os.path.join(REPO, "run.py"), "--leaderboard", *common, "--output_dir=ray",
                                 "--checkpoint_dir=saved-ray", "--ray_address=auto", "--cpus_per_run=1"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ray_cluster)
    folder = tmp_path / "saved-ray" / "tiny" / "GRU4RecPaper-a-seed2020"
    wait_for_epoch(folder, 1, parallel, timeout=600)
    run, worker = run_py_process(f"--checkpoint_dir={folder}")
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{run}") and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not os.path.exists(f"/proc/{run}") or open(f"/proc/{run}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    output, _ = parallel.communicate(timeout=900)
    side_by_side.stopped.set()
    side_by_side.join()
    assert parallel.returncode == 0, output[-3000:]
    assert gone, "the killed worker's run went on"
    assert side_by_side.seen, "the two entries did not train side by side"
    assert "GRU4RecPaper:a seed 2020 (resuming" in output  # the retried task continued from the checkpoint

    boards = {name: json.loads((tmp_path / name / "leaderboard-tiny.json").read_text())["rows"] for name in ("serial", "ray")}
    for serial_row, ray_row in zip(*(sorted(rows, key=lambda row: row["config_name"]) for rows in boards.values())):
        assert (ray_row["config_name"], ray_row["seed"]) == (serial_row["config_name"], serial_row["seed"])
        for field in ("test_result", "best_valid_result", "epochs", "stopped_by"):
            assert ray_row[field] == serial_row[field], (ray_row["config_name"], field)
        assert ray_row["ray"] == {"address": "auto", "cpus_per_run": 1.0, "gpus_per_run": 0.0} and ray_row["shared_cores"]
        users = [evaluation.load(tmp_path / name / row["per_user_file"]) for name, row in (("serial", serial_row), ("ray", ray_row))]
        assert list(users[0][0]) == list(users[1][0]) and all(np.array_equal(users[0][1][k], users[1][1][k]) for k in users[0][1])
    assert len(boards["ray"]) == 2 and not list(folder.glob("*-last.pth"))  # nothing left to resume


@pytest.mark.parametrize("flags,message", [
    (["--ray_address=somewhere"], "--ray_address=somewhere: use local, auto or HOST:PORT"),
    (["--ray_address=local", "--cpus_per_run=0"], "--cpus_per_run=0.0 --gpus_per_run=0.0: use cpus > 0, gpus >= 0"),
    (["--ray_address=local", "--gpus_per_run=one"], "--gpus_per_run=one: use a number"),
])
def test_bad_ray_settings_are_one_line_errors(flags, message, tmp_path, capsys):
    code = main(["--leaderboard", "--models=Pop", f"--output_dir={tmp_path}", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
